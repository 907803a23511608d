//! kube-sim's patch semantics (PATCH bodies from any client): strategic merge, JSON merge patch
//! (RFC 7386), JSON patch (RFC 6902) and the server-side-apply model (YAML body, deep merge, leaf
//! field sets, `fieldsV1`). Nothing panics; a merge patch and an apply are idempotent; an object's
//! field set survives the `fieldsV1` encoding; removing a path leaves nothing there.
//!
//! Input: an operation byte (strategic merge, merge patch, JSON patch, apply), the object as JSON,
//! then the patch body.

use kube_sim::patch::{
    apply_merge, changed, from_fields_v1, get, leaves, remove, strategic_merge, to_fields_v1,
};
use serde_json::Value;

/// Checks the field-set model on an object.
fn check_fields(object: &Value) {
    if !object.is_object() {
        return;
    }
    let set = leaves(object);
    assert_eq!(
        from_fields_v1(&to_fields_v1(&set)),
        set,
        "fieldsV1 round trip of {object}"
    );
    if let Some(path) = set.iter().next() {
        let mut pruned = object.clone();
        remove(&mut pruned, path);
        assert!(
            get(&pruned, path).is_none(),
            "{path:?} survives its removal"
        );
    }
}

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<Value>();
    let Some(Ok(mut object)) = stream.next() else {
        return;
    };
    let body = &rest[stream.byte_offset()..];
    let original = object.clone();
    match op % 4 {
        0 => {
            let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                return;
            };
            strategic_merge(&mut object, &patch);
            if patch.as_object().is_some_and(|p| p.is_empty()) && original.is_object() {
                assert_eq!(
                    object, original,
                    "an empty strategic merge patch changed the object"
                );
            }
        }
        1 => {
            let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                return;
            };
            json_patch::merge(&mut object, &patch);
            let once = object.clone();
            json_patch::merge(&mut object, &patch);
            assert_eq!(object, once, "a merge patch is not idempotent");
        }
        2 => {
            let Ok(patch) = serde_json::from_slice::<json_patch::Patch>(body) else {
                return;
            };
            // kube-sim patches a copy and drops it on failure, so a failed patch's leftovers do not
            // matter (json-patch 4.2 does not undo a failed `move`'s removal of `from`).
            if json_patch::patch(&mut object, &patch).is_err() {
                return;
            }
        }
        _ => {
            let Ok(config) = serde_saphyr::from_slice::<Value>(body) else {
                return;
            };
            apply_merge(&mut object, &config);
            let once = object.clone();
            apply_merge(&mut object, &config);
            assert_eq!(object, once, "an apply is not idempotent");
            for path in changed(&original, &once) {
                assert_ne!(get(&original, &path), get(&once, &path));
            }
            check_fields(&config);
        }
    }
    check_fields(&original);
    check_fields(&object);
}
