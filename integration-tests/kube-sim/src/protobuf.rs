//! Decoding of the Kubernetes protobuf envelope for the request bodies kubectl's typed clients
//! send (`kubectl create namespace|configmap|secret|serviceaccount|token|role|rolebinding`,
//! `kubectl auth can-i`). Responses are always JSON, which those clients accept.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

/// How one field is decoded.
#[derive(Debug, Clone, Copy)]
enum K {
    Str,
    Int,
    Bool,
    Msg(&'static [F]),
    MapStr,
    MapBytes,
}

/// One field: number, JSON name, kind, repeated.
type F = (u32, &'static str, K, bool);

const OWNER_REF: &[F] = &[
    (1, "kind", K::Str, false),
    (3, "name", K::Str, false),
    (4, "uid", K::Str, false),
    (5, "apiVersion", K::Str, false),
    (6, "controller", K::Bool, false),
    (7, "blockOwnerDeletion", K::Bool, false),
];
const META: &[F] = &[
    (1, "name", K::Str, false),
    (2, "generateName", K::Str, false),
    (3, "namespace", K::Str, false),
    (5, "uid", K::Str, false),
    (6, "resourceVersion", K::Str, false),
    (7, "generation", K::Int, false),
    (11, "labels", K::MapStr, false),
    (12, "annotations", K::MapStr, false),
    (13, "ownerReferences", K::Msg(OWNER_REF), true),
    (14, "finalizers", K::Str, true),
];
const NS_SPEC: &[F] = &[(1, "finalizers", K::Str, true)];
const NAMESPACE: &[F] = &[
    (1, "metadata", K::Msg(META), false),
    (2, "spec", K::Msg(NS_SPEC), false),
];
const CONFIGMAP: &[F] = &[
    (1, "metadata", K::Msg(META), false),
    (2, "data", K::MapStr, false),
    (3, "binaryData", K::MapBytes, false),
    (4, "immutable", K::Bool, false),
];
const SECRET: &[F] = &[
    (1, "metadata", K::Msg(META), false),
    (2, "data", K::MapBytes, false),
    (3, "type", K::Str, false),
    (4, "stringData", K::MapStr, false),
    (5, "immutable", K::Bool, false),
];
const SERVICEACCOUNT: &[F] = &[
    (1, "metadata", K::Msg(META), false),
    (4, "automountServiceAccountToken", K::Bool, false),
];
const BOUND_REF: &[F] = &[
    (1, "kind", K::Str, false),
    (2, "apiVersion", K::Str, false),
    (3, "name", K::Str, false),
    (4, "uid", K::Str, false),
];
const TOKEN_REQUEST_SPEC: &[F] = &[
    (1, "audiences", K::Str, true),
    (3, "boundObjectRef", K::Msg(BOUND_REF), false),
    (4, "expirationSeconds", K::Int, false),
];
const TOKEN_REQUEST: &[F] = &[
    (1, "metadata", K::Msg(META), false),
    (2, "spec", K::Msg(TOKEN_REQUEST_SPEC), false),
];
const TOKEN_REVIEW_SPEC: &[F] = &[(1, "token", K::Str, false), (2, "audiences", K::Str, true)];
const TOKEN_REVIEW: &[F] = &[
    (1, "metadata", K::Msg(META), false),
    (2, "spec", K::Msg(TOKEN_REVIEW_SPEC), false),
];
const RESOURCE_ATTRS: &[F] = &[
    (1, "namespace", K::Str, false),
    (2, "verb", K::Str, false),
    (3, "group", K::Str, false),
    (4, "version", K::Str, false),
    (5, "resource", K::Str, false),
    (6, "subresource", K::Str, false),
    (7, "name", K::Str, false),
];
const NON_RESOURCE_ATTRS: &[F] = &[(1, "path", K::Str, false), (2, "verb", K::Str, false)];
const SAR_SPEC: &[F] = &[
    (1, "resourceAttributes", K::Msg(RESOURCE_ATTRS), false),
    (
        2,
        "nonResourceAttributes",
        K::Msg(NON_RESOURCE_ATTRS),
        false,
    ),
    (3, "user", K::Str, false),
    (4, "groups", K::Str, true),
    (6, "uid", K::Str, false),
];
const SAR: &[F] = &[
    (1, "metadata", K::Msg(META), false),
    (2, "spec", K::Msg(SAR_SPEC), false),
];
const POLICY_RULE: &[F] = &[
    (1, "verbs", K::Str, true),
    (2, "apiGroups", K::Str, true),
    (3, "resources", K::Str, true),
    (4, "resourceNames", K::Str, true),
    (5, "nonResourceURLs", K::Str, true),
];
const ROLE: &[F] = &[
    (1, "metadata", K::Msg(META), false),
    (2, "rules", K::Msg(POLICY_RULE), true),
];
const SUBJECT: &[F] = &[
    (1, "kind", K::Str, false),
    (2, "apiGroup", K::Str, false),
    (3, "name", K::Str, false),
    (4, "namespace", K::Str, false),
];
const ROLE_REF: &[F] = &[
    (1, "apiGroup", K::Str, false),
    (2, "kind", K::Str, false),
    (3, "name", K::Str, false),
];
const BINDING: &[F] = &[
    (1, "metadata", K::Msg(META), false),
    (2, "subjects", K::Msg(SUBJECT), true),
    (3, "roleRef", K::Msg(ROLE_REF), false),
];

fn schema_for(kind: &str) -> Option<&'static [F]> {
    Some(match kind {
        "Namespace" => NAMESPACE,
        "ConfigMap" => CONFIGMAP,
        "Secret" => SECRET,
        "ServiceAccount" => SERVICEACCOUNT,
        "TokenRequest" => TOKEN_REQUEST,
        "TokenReview" => TOKEN_REVIEW,
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => SAR,
        "Role" | "ClusterRole" => ROLE,
        "RoleBinding" | "ClusterRoleBinding" => BINDING,
        _ => return None,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i)?;
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// (field number, wire type, payload): varints as value, length-delimited as slice.
    fn field(&mut self) -> Option<Field<'a>> {
        let key = self.varint()?;
        let (num, wt) = ((key >> 3) as u32, key & 7);
        let v = match wt {
            0 => Ok(self.varint()?),
            1 => {
                self.i += 8;
                Ok(0)
            }
            2 => {
                let n = self.varint()? as usize;
                let s = self.b.get(self.i..self.i + n)?;
                self.i += n;
                Err(s)
            }
            5 => {
                self.i += 4;
                Ok(0)
            }
            _ => return None,
        };
        Some((num, v))
    }
}

/// A decoded field: number and payload (varint value, or the bytes of a length-delimited field).
type Field<'a> = (u32, Result<u64, &'a [u8]>);

fn fields(b: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut r = Reader { b, i: 0 };
    let mut out = Vec::new();
    while r.i < b.len() {
        out.push(r.field()?);
    }
    Some(out)
}

fn map_entry(b: &[u8], bytes: bool) -> Option<(String, Value)> {
    let (mut k, mut v) = (String::new(), json!(""));
    for (n, p) in fields(b)? {
        let s = p.err()?;
        match n {
            1 => k = String::from_utf8_lossy(s).into_owned(),
            2 => {
                v = if bytes {
                    json!(B64.encode(s))
                } else {
                    json!(String::from_utf8_lossy(s))
                }
            }
            _ => {}
        }
    }
    Some((k, v))
}

fn decode_msg(b: &[u8], schema: &[F]) -> Option<Value> {
    let mut m = Map::new();
    for (num, payload) in fields(b)? {
        let Some(&(_, name, kind, repeated)) = schema.iter().find(|f| f.0 == num) else {
            continue;
        };
        let v = match (kind, payload) {
            // Go writes empty optional strings; the JSON form omits them.
            (K::Str, Err(s)) if s.is_empty() && !repeated => continue,
            (K::Str, Err(s)) => json!(String::from_utf8_lossy(s)),
            (K::Int, Ok(n)) => json!(n as i64),
            (K::Bool, Ok(n)) => json!(n != 0),
            (K::Msg(sub), Err(s)) => decode_msg(s, sub)?,
            (K::MapStr | K::MapBytes, Err(s)) => {
                let (k, v) = map_entry(s, matches!(kind, K::MapBytes))?;
                let e = m.entry(name).or_insert_with(|| json!({}));
                e[k] = v;
                continue;
            }
            _ => return None,
        };
        if repeated {
            let e = m.entry(name).or_insert_with(|| json!([]));
            e.as_array_mut()?.push(v);
        } else {
            m.insert(name.into(), v);
        }
    }
    Some(Value::Object(m))
}

/// Decode a `k8s\0`-prefixed protobuf body into the JSON object it carries, for the kinds
/// listed above. `None` when the body is not decodable or the kind is not supported.
pub fn decode(body: &[u8]) -> Option<Value> {
    let rest = body.strip_prefix(b"k8s\x00")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, p) in fields(rest)? {
        match (n, p) {
            (1, Err(tm)) => {
                for (n2, p2) in fields(tm)? {
                    match (n2, p2) {
                        (1, Err(s)) => api_version = String::from_utf8_lossy(s).into_owned(),
                        (2, Err(s)) => kind = String::from_utf8_lossy(s).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Err(s)) => raw = s,
            _ => {}
        }
    }
    let mut obj = decode_msg(raw, schema_for(&kind)?)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Some(obj)
}
