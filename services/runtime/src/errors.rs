//! Errors for people.
//!
//! [`error_chain`] turns an error and its causes into one line (for a log field, a watchdog
//! message or a status). [`StartupReport`] is what a process prints when a component cannot start
//! or stops with an error: one line per cause, each cause once, and for the common failures a
//! hint on what to do (a port already in use, an unreadable TLS file, an unreachable server; a
//! caller adds its own recognisers, such as the binary's "no kubeconfig").
//!
//! Many errors repeat their source in their own message (`"{action} {path}: {source}"`), and
//! some third-party errors embed the whole chain in the outermost message; printing every cause
//! naively repeats the same text two or three times. So a cause whose text is already shown is
//! left out.

use std::{error::Error, fmt, io::ErrorKind};

use crate::RuntimeError;

/// The messages of `err` and its causes, outermost first, each once: a cause whose text an
/// earlier message already contains is left out.
pub fn causes(err: &dyn Error) -> Vec<String> {
    let mut lines: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !lines.iter().any(|line| line.contains(&text)) {
            lines.push(text);
        }
        source = cause.source();
    }
    lines
}

/// `err` and its causes on one line, `: `-separated, each cause once (see [`causes`]).
pub fn error_chain(err: &dyn Error) -> String {
    causes(err).join(": ")
}

/// Recognises one kind of failure anywhere in a chain and says what to do about it.
pub type Hinter = fn(&(dyn Error + 'static)) -> Option<String>;

/// The report a process prints once when a component fails: a headline, the causes (each once)
/// and, for a recognised failure, a hint.
///
/// ```text
/// autocrane data-repository: serving the DataRepository API
///   cause: binding 127.0.0.1:9090 (--admin-listen)
///   cause: Address already in use (os error 98)
///   hint: another process listens on 127.0.0.1:9090; …
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupReport {
    /// `<program>: <outermost error>`.
    pub headline: String,
    /// The causes below the outermost error, each once.
    pub causes: Vec<String>,
    /// What to do, when the failure is a recognised one.
    pub hint: Option<String>,
}

impl StartupReport {
    /// The report for `err` of `program` (for example `autocrane watchdog-listener`), with the
    /// runtime's own hints and then `extra` ones; the first hint found wins.
    pub fn new(program: &str, err: &(dyn Error + 'static), extra: &[Hinter]) -> Self {
        let mut lines = causes(err).into_iter();
        let headline = format!("{program}: {}", lines.next().unwrap_or_default());
        let hint = RUNTIME_HINTS
            .iter()
            .chain(extra)
            .find_map(|hinter| chain(err).find_map(hinter));
        Self {
            headline,
            causes: lines.collect(),
            hint,
        }
    }

    /// The report on one line (for a structured log field).
    pub fn one_line(&self) -> String {
        let mut line = self.headline.clone();
        for cause in &self.causes {
            line.push_str(": ");
            line.push_str(cause);
        }
        if let Some(hint) = &self.hint {
            line.push_str(" (hint: ");
            line.push_str(hint);
            line.push(')');
        }
        line
    }
}

impl fmt::Display for StartupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.headline)?;
        for cause in &self.causes {
            write!(f, "\n  cause: {cause}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// `err` and each of its sources.
fn chain<'a>(
    err: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> + 'a {
    std::iter::successors(Some(err), |err: &&'a (dyn Error + 'static)| (*err).source())
}

const RUNTIME_HINTS: &[Hinter] = &[bind_hint, tls_hint, endpoint_hint];

/// A listener whose address is taken or unusable: name the flag and its variable.
fn bind_hint(err: &(dyn Error + 'static)) -> Option<String> {
    let RuntimeError::Bind {
        addr, flag, source, ..
    } = err.downcast_ref::<RuntimeError>()?
    else {
        return None;
    };
    let env = flag_env(flag);
    let hint = match source.kind() {
        ErrorKind::AddrInUse if *flag == "--admin-listen" => format!(
            "another process already listens on {addr} (is another AutoCrane server running on this machine?); give this one another admin address with `--admin-listen 127.0.0.1:0` or turn it off with `--admin-listen off` ({env})"
        ),
        ErrorKind::AddrInUse => format!(
            "another process already listens on {addr}; choose another address with `{flag} HOST:PORT` ({env})"
        ),
        ErrorKind::PermissionDenied => format!(
            "this process may not listen on {addr} (ports below 1024 need privileges); choose another port with `{flag}` ({env})"
        ),
        ErrorKind::AddrNotAvailable => format!(
            "{addr} is not an address of this machine; choose another with `{flag}` ({env})"
        ),
        _ => return None,
    };
    Some(hint)
}

/// An unreadable TLS file: which flag named which path.
fn tls_hint(err: &(dyn Error + 'static)) -> Option<String> {
    let RuntimeError::LoadTls { path, flag, source } = err.downcast_ref::<RuntimeError>()? else {
        return None;
    };
    let env = flag_env(flag);
    let what = match source.kind() {
        ErrorKind::NotFound => "does not exist",
        ErrorKind::PermissionDenied => "is not readable by this process",
        _ => "cannot be read",
    };
    Some(format!(
        "{} (given by `{flag}`, {env}) {what}; fix the path or mount the certificate Secret there",
        path.display()
    ))
}

/// A server that cannot be reached or whose URL is malformed: which URL.
fn endpoint_hint(err: &(dyn Error + 'static)) -> Option<String> {
    let RuntimeError::Endpoint { endpoint, .. } = err.downcast_ref::<RuntimeError>()? else {
        return None;
    };
    Some(format!(
        "check that {endpoint} is the right URL (`http://host:port` or `https://host:port`) and that its server is running and reachable from here"
    ))
}

/// The environment variable of a runtime flag, for hints.
fn flag_env(flag: &str) -> String {
    format!(
        "AUTOCRANE_{}",
        flag.trim_start_matches('-')
            .replace('-', "_")
            .to_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that repeats its source in its own message, as `"{action} {path}: {source}"`
    /// variants do.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}: {1}")]
    struct Repeating(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Outer(&'static str, #[source] RuntimeError);

    fn bind(flag: &'static str, kind: ErrorKind) -> Outer {
        Outer(
            "serving the WatchdogListener API",
            RuntimeError::Bind {
                addr: "127.0.0.1:9090".parse().unwrap(),
                flag,
                source: std::io::Error::from(kind),
            },
        )
    }

    #[test]
    fn a_chain_is_one_line_with_each_cause_once() {
        let err = Repeating("writing /x", std::io::Error::other("disk full"));
        assert_eq!(error_chain(&err), "writing /x: disk full");
        let err = Outer(
            "serving",
            RuntimeError::TlsConfig("--tls-cert and --tls-key must be given together".into()),
        );
        assert_eq!(
            error_chain(&err),
            "serving: invalid TLS configuration: --tls-cert and --tls-key must be given together"
        );
    }

    #[test]
    fn a_report_prints_each_cause_once_on_its_own_line() {
        let report = StartupReport::new(
            "autocrane data-repository",
            &bind("--listen", ErrorKind::AddrInUse),
            &[],
        );
        let text = report.to_string();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "autocrane data-repository: serving the WatchdogListener API",
                "  cause: binding 127.0.0.1:9090 (--listen)",
                &format!("  cause: {}", std::io::Error::from(ErrorKind::AddrInUse)),
                "  hint: another process already listens on 127.0.0.1:9090; choose another address with `--listen HOST:PORT` (AUTOCRANE_LISTEN)",
            ]
        );
        assert!(!report.one_line().contains('\n'));
    }

    #[test]
    fn admin_port_in_use_says_how_to_move_or_disable_it() {
        let report = StartupReport::new("x", &bind("--admin-listen", ErrorKind::AddrInUse), &[]);
        let hint = report.hint.unwrap();
        assert!(hint.contains("--admin-listen 127.0.0.1:0"), "{hint}");
        assert!(hint.contains("--admin-listen off"), "{hint}");
        assert!(hint.contains("AUTOCRANE_ADMIN_LISTEN"), "{hint}");
    }

    #[test]
    fn other_bind_failures_have_no_hint_unless_recognised() {
        let report = StartupReport::new("x", &bind("--listen", ErrorKind::Other), &[]);
        assert_eq!(report.hint, None);
    }

    #[test]
    fn unreadable_tls_file_names_flag_and_path() {
        let err = Outer(
            "serving",
            RuntimeError::LoadTls {
                path: "/etc/tls/tls.crt".into(),
                flag: "--tls-cert",
                source: std::io::Error::from(ErrorKind::NotFound),
            },
        );
        let report = StartupReport::new("x", &err, &[]);
        let hint = report.hint.unwrap();
        assert!(hint.contains("/etc/tls/tls.crt"), "{hint}");
        assert!(hint.contains("`--tls-cert`"), "{hint}");
        assert!(hint.contains("AUTOCRANE_TLS_CERT"), "{hint}");
        assert!(hint.contains("does not exist"), "{hint}");
    }

    #[test]
    fn unreachable_server_names_the_url() {
        let source = tonic::transport::Endpoint::from_shared("not a url").unwrap_err();
        let err = Outer(
            "configuring the VersionWatcher client",
            RuntimeError::Endpoint {
                endpoint: "not a url".into(),
                source,
            },
        );
        let hint = StartupReport::new("x", &err, &[]).hint.unwrap();
        assert!(hint.contains("not a url"), "{hint}");
    }

    #[test]
    fn callers_add_their_own_hints() {
        fn disk_full(err: &(dyn Error + 'static)) -> Option<String> {
            let io = err.downcast_ref::<std::io::Error>()?;
            (io.to_string() == "disk full").then(|| "free some space".to_string())
        }
        let err = Repeating("writing /x", std::io::Error::other("disk full"));
        let report = StartupReport::new("x", &err, &[disk_full]);
        assert_eq!(report.hint.as_deref(), Some("free some space"));
        assert_eq!(report.causes, Vec::<String>::new());
    }

    #[test]
    fn flag_env_names_follow_the_flags() {
        assert_eq!(flag_env("--admin-listen"), "AUTOCRANE_ADMIN_LISTEN");
        assert_eq!(flag_env("--tls-client-ca"), "AUTOCRANE_TLS_CLIENT_CA");
    }
}
