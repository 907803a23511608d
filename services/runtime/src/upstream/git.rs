//! Running `git` against remotes a caller named, safely.
//!
//! `git` is a general tool: a URL can name a local path (`file://`, `/srv/x`), run a program
//! (`ext::sh -c …`), read a file descriptor (`fd::`), or smuggle an option (`--upload-pack=…`,
//! `ssh://-oProxyCommand=…`); and its configuration (the server's `~/.gitconfig`,
//! `GIT_CONFIG_*` variables) can rewrite URLs, enable those transports, or run helpers. So:
//!
//! - [`parse_remote`] accepts only `https://`, `http://`, `git://` and `ssh://` URLs with a
//!   plain host (no option-like user or host, no password, no percent-encoding), pure and
//!   tested;
//! - [`GitSandbox::remote`] resolves the host and checks every address against the
//!   [`EgressPolicy`] *before* the `git` process starts; the remaining gap is that `git`
//!   resolves the name again itself (a DNS answer that changes in between is not seen; an IP
//!   literal or an allowed name closes it);
//! - [`GitSandbox::command`] starts `git` with an empty environment but `PATH`, a private empty
//!   `HOME`, no system or global config, `GIT_ALLOW_PROTOCOL` and `protocol.*.allow` limiting
//!   transports to the four above, no redirects, no credential helpers and no prompts.

use std::{
    ffi::OsString,
    io,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::egress::{EgressPolicy, EgressRefused, host_literal};

/// The transports `git` may use, as `GIT_ALLOW_PROTOCOL` spells them.
pub const ALLOWED_PROTOCOLS: [&str; 4] = ["https", "http", "git", "ssh"];

/// A remote's scheme, host and port, from [`parse_remote`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitRemote {
    /// One of [`ALLOWED_PROTOCOLS`].
    pub scheme: &'static str,
    /// The host as written (`[v6]` keeps its brackets), lower-case.
    pub host: String,
    /// The port, or the scheme's default.
    pub port: u16,
}

/// Why a remote may not be reached.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The URL breaks the grammar; the message says which rule.
    #[error("{0}")]
    BadUrl(String),
    /// The host is or resolves to an address the egress policy refuses.
    #[error(transparent)]
    Refused(#[from] EgressRefused),
    /// The host did not resolve.
    #[error("resolving {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
}

fn bad(rule: &str) -> RemoteError {
    RemoteError::BadUrl(rule.to_string())
}

/// Checks the grammar of a git remote URL: `<scheme>://[user@]host[:port][/path]` with a scheme
/// of [`ALLOWED_PROTOCOLS`]. Everything else `git` would accept (local paths, `file://`,
/// `ext::`, `fd::`, scp-like `host:path`, anything starting with `-`) is refused, as are option-
/// like users and hosts, passwords (they would sit on `git`'s command line), percent-encoding
/// and whitespace.
pub fn parse_remote(url: &str) -> Result<GitRemote, RemoteError> {
    if url.starts_with('-') {
        return Err(bad("must not start with '-'"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain whitespace or control characters"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad(
            "must be an https://, http://, git:// or ssh:// URL (local paths, file://, ext:: and scp-like host:path remotes are refused)",
        ));
    };
    let (scheme, default_port) = match scheme {
        "https" => ("https", 443),
        "http" => ("http", 80),
        "git" => ("git", 9418),
        "ssh" => ("ssh", 22),
        _ => {
            return Err(bad(
                "must be an https://, http://, git:// or ssh:// URL (file:// and other transports are refused)",
            ));
        }
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('%') {
        return Err(bad("the host must not be percent-encoded"));
    }
    let host_port = match authority.rsplit_once('@') {
        Some((user, host_port)) => {
            if user.contains(':') {
                return Err(bad(
                    "must not carry a password (it would be on git's command line); use credentials outside the URL",
                ));
            }
            if user.is_empty() || user.starts_with('-') || user.contains('@') {
                return Err(bad("the user name must not be empty or start with '-'"));
            }
            host_port
        }
        None => authority,
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (inside, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 host must be closed with ']'"))?;
        inside
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("the bracketed host is not an IPv6 address"))?;
        let host = format!("[{}]", inside.to_ascii_lowercase());
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(bad("only a :port may follow the host")),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
            None => (host_port.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("must name a host"));
    }
    if !host.starts_with('[')
        && (host.starts_with('-')
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'))
    {
        return Err(bad(
            "the host must be a name of letters, digits, '.', '-' and '_' not starting with '-', or an IP address",
        ));
    }
    let port = match port {
        None => default_port,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
    };
    Ok(GitRemote { scheme, host, port })
}

impl GitRemote {
    /// Checks every address `addresses` (what the host resolved to) against `policy`; an IP
    /// literal host is its own only address.
    pub fn check_addresses(
        &self,
        policy: &EgressPolicy,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) -> Result<(), RemoteError> {
        let mut any = false;
        for ip in addresses {
            policy.check(&self.host, ip)?;
            any = true;
        }
        if any {
            Ok(())
        } else {
            Err(RemoteError::Resolve {
                host: self.host.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            })
        }
    }

    fn literal(&self) -> Option<IpAddr> {
        host_literal(&self.host)
    }

    fn lookup_target(&self) -> String {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        bare.to_string()
    }
}

/// Runs `git` isolated from the server's environment and configuration; cheap to clone.
#[derive(Clone, Debug)]
pub struct GitSandbox {
    policy: EgressPolicy,
    home: PathBuf,
    path: OsString,
}

impl GitSandbox {
    /// A sandbox whose `git` processes get `home` (created, mode 0700, and left empty by this
    /// code) as `HOME` and the server's `PATH`, and reach only what `policy` allows.
    pub fn new(policy: EgressPolicy, home: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&home)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self {
            policy,
            home,
            path: std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        })
    }

    /// The egress policy remotes are checked against.
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// The private `HOME` of its `git` processes.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `git` with the isolated environment and the transport limits, stdin closed; for local
    /// commands, and the base of [`GitSandbox::remote`]. Callers add the subcommand, then `--`
    /// before any URL or path argument.
    pub fn command(&self) -> Command {
        let mut command = Command::new("git");
        command
            .env_clear()
            .env("PATH", &self.path)
            .env("HOME", &self.home)
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS.join(":"))
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .args(["-c", "protocol.allow=never"]);
        for protocol in ALLOWED_PROTOCOLS {
            command
                .arg("-c")
                .arg(format!("protocol.{protocol}.allow=always"));
        }
        command
            // Redirects would go where the policy never looked; credential helpers and askpass
            // programs are configuration the server did not choose.
            .args(["-c", "http.followRedirects=false"])
            .args(["-c", "credential.helper="])
            .args(["-c", "core.askPass="])
            .stdin(Stdio::null());
        command
    }

    /// A [`GitSandbox::command`] for `url`, after its grammar is checked and its host resolved
    /// and allowed (blocking: call it off the async runtime, e.g. in `spawn_blocking`).
    pub fn remote_blocking(&self, url: &str) -> Result<Command, RemoteError> {
        let remote = parse_remote(url)?;
        let addresses: Vec<IpAddr> = match remote.literal() {
            Some(ip) => vec![ip],
            None => (remote.lookup_target().as_str(), remote.port)
                .to_socket_addrs()
                .map_err(|source| RemoteError::Resolve {
                    host: remote.host.clone(),
                    source,
                })?
                .map(|addr: SocketAddr| addr.ip())
                .collect(),
        };
        remote.check_addresses(&self.policy, addresses)?;
        Ok(self.command())
    }

    /// [`GitSandbox::remote_blocking`] for async callers (the lookup runs on tokio's blocking
    /// pool).
    pub async fn remote(&self, url: &str) -> Result<tokio::process::Command, RemoteError> {
        let remote = parse_remote(url)?;
        let addresses: Vec<IpAddr> = match remote.literal() {
            Some(ip) => vec![ip],
            None => tokio::net::lookup_host((remote.lookup_target(), remote.port))
                .await
                .map_err(|source| RemoteError::Resolve {
                    host: remote.host.clone(),
                    source,
                })?
                .map(|addr| addr.ip())
                .collect(),
        };
        remote.check_addresses(&self.policy, addresses)?;
        Ok(self.command().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::egress::HostPattern;

    #[test]
    fn only_plain_remote_urls_of_four_transports_parse() {
        for (url, scheme, host, port) in [
            ("https://github.com/a/b.git", "https", "github.com", 443),
            ("http://git.internal:8080/a", "http", "git.internal", 8080),
            ("git://127.0.0.1:9418/a.git", "git", "127.0.0.1", 9418),
            ("ssh://git@Example.com/a.git", "ssh", "example.com", 22),
            ("ssh://[::1]:2222/a", "ssh", "[::1]", 2222),
            ("git://2130706433/a", "git", "2130706433", 9418),
        ] {
            assert_eq!(
                parse_remote(url).unwrap(),
                GitRemote {
                    scheme,
                    host: host.into(),
                    port
                },
                "{url}"
            );
        }
    }

    #[test]
    fn hostile_remote_urls_are_refused_by_the_grammar() {
        for url in [
            "file:///etc",
            "file://localhost/srv/repo",
            "/srv/repo",
            "./repo",
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "fd::17",
            "git@github.com:a/b.git",
            "host:path",
            "--upload-pack=touch /tmp/pwned",
            "-oProxyCommand=x",
            "ssh://-oProxyCommand=touch%20x/a",
            "ssh://-oProxyCommand@host/a",
            "ssh://-oProxyCommand=x/a",
            "ssh://user:secret@host/a",
            "https://user:token@github.com/a",
            "https://%6c%6fcalhost/a",
            "HTTPS://github.com/a",
            "ftp://host/a",
            "https:///a",
            "https://host:0/a",
            "https://host:99999/a",
            "https://host:+80/a",
            "https://[::1/a",
            "https://[nope]/a",
            "https://a b/c",
            "https://host/a\nb",
        ] {
            assert!(
                matches!(parse_remote(url), Err(RemoteError::BadUrl(_))),
                "{url} must be refused"
            );
        }
    }

    #[test]
    fn remotes_are_checked_on_every_address_before_git_starts() {
        let home = std::env::temp_dir().join(format!("autocrane-git-home-{}", std::process::id()));
        let none = GitSandbox::new(EgressPolicy::default(), home.clone()).unwrap();
        for url in [
            "git://127.0.0.1:1/a",
            "git://localhost:1/a",
            "git://0x7f.1:1/a",
            "ssh://[::ffff:127.0.0.1]/a",
            "http://169.254.169.254/latest",
        ] {
            let refused = none.remote_blocking(url).unwrap_err();
            assert!(
                matches!(refused, RemoteError::Refused(_)),
                "{url}: {refused}"
            );
        }
        let local = GitSandbox::new(
            EgressPolicy::new(["127.0.0.1".parse::<HostPattern>().unwrap()]),
            home.clone(),
        )
        .unwrap();
        assert!(local.remote_blocking("git://127.0.0.1:1/a").is_ok());
        assert!(local.remote_blocking("git://localhost:1/a").is_ok());
        assert!(local.remote_blocking("git://[::1]:1/a").is_err());
        // A name with one refused address among its answers is refused (git might pick it).
        let remote = parse_remote("https://mixed.example/a").unwrap();
        let mixed = [IpAddr::from([8, 8, 8, 8]), IpAddr::from([10, 0, 0, 1])];
        assert!(remote.check_addresses(local.policy(), mixed).is_err());
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn the_command_carries_no_server_environment() {
        let home = std::env::temp_dir().join(format!("autocrane-git-env-{}", std::process::id()));
        let sandbox = GitSandbox::new(EgressPolicy::default(), home.clone()).unwrap();
        let command = sandbox.command();
        let env: Vec<(String, String)> = command
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
            .collect();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "GIT_ALLOW_PROTOCOL",
                "GIT_CONFIG_GLOBAL",
                "GIT_CONFIG_NOSYSTEM",
                "GIT_SSH_COMMAND",
                "GIT_TERMINAL_PROMPT",
                "HOME",
                "LC_ALL",
                "PATH"
            ]
        );
        assert!(env.contains(&("GIT_ALLOW_PROTOCOL".into(), "https:http:git:ssh".into())));
        let output = sandbox.command().arg("--version").output().unwrap();
        assert!(output.status.success(), "git runs in the sandbox");
        std::fs::remove_dir_all(&home).unwrap();
    }
}
