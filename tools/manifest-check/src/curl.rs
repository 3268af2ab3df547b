//! `curl` invocations in exec probes and hooks: where each goes (URL, `--unix-socket`), its
//! method and whether it fails on an HTTP error status (`-f`).

use crate::bootstrap::Admin;
use crate::shell::simple_commands;

/// One `curl` invocation: where it goes and how.
#[derive(Debug, Default)]
pub struct Curl {
    /// `--unix-socket PATH`.
    pub unix_socket: Option<String>,
    /// `-X`/`--request`.
    pub request: Option<String>,
    /// `-d`/`--data*` (POST unless `-X` says otherwise).
    pub data: bool,
    pub url: Option<String>,
    /// `-f`/`--fail`: an HTTP error status is a non-zero exit (what a probe needs to fail).
    pub fail: bool,
}

impl Curl {
    fn option(&mut self, name: &str, value: Option<&str>) {
        match name {
            "--unix-socket" => self.unix_socket = value.map(str::to_string),
            "-X" | "--request" => self.request = value.map(str::to_ascii_uppercase),
            "-d" | "--data" | "--data-ascii" | "--data-binary" | "--data-raw"
            | "--data-urlencode" => self.data = true,
            "-f" | "--fail" | "--fail-with-body" => self.fail = true,
            "--url" => self.url = value.map(str::to_string),
            _ => {}
        }
    }

    pub fn method(&self) -> String {
        self.request
            .clone()
            .unwrap_or_else(|| if self.data { "POST" } else { "GET" }.to_string())
    }

    /// The URL's `host[:port]` and its path (no query).
    fn authority_and_path(&self) -> (&str, &str) {
        let url = self.url.as_deref().unwrap_or_default();
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        (authority, path.split(['?', '#']).next().unwrap_or_default())
    }

    pub fn path(&self) -> &str {
        self.authority_and_path().1
    }
}

/// The `curl` invocations of an exec `command`.
pub fn curls(command: &[String]) -> Vec<Curl> {
    // Options whose value is the next word (or the rest of a short-option cluster).
    const SHORT_WITH_VALUE: &str = "AbcCdeEFHKmortTuUwXyYz";
    const LONG_WITH_VALUE: &[&str] = &[
        "--abstract-unix-socket",
        "--connect-timeout",
        "--data",
        "--data-ascii",
        "--data-binary",
        "--data-raw",
        "--data-urlencode",
        "--header",
        "--max-time",
        "--output",
        "--request",
        "--retry",
        "--retry-delay",
        "--retry-max-time",
        "--unix-socket",
        "--url",
        "--user",
        "--user-agent",
        "--write-out",
    ];
    let mut out = Vec::new();
    for words in simple_commands(command) {
        let Some((prog, args)) = words.split_first() else {
            continue;
        };
        if prog != "curl" && !prog.ends_with("/curl") {
            continue;
        }
        let mut c = Curl::default();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            i += 1;
            if let Some(long) = a.strip_prefix("--") {
                match long.split_once('=') {
                    Some((name, value)) => c.option(&format!("--{name}"), Some(value)),
                    None if LONG_WITH_VALUE.contains(&a) => {
                        c.option(a, args.get(i).map(String::as_str));
                        i += 1;
                    }
                    None => c.option(a, None),
                }
            } else if let Some(cluster) = a.strip_prefix('-').filter(|c| !c.is_empty()) {
                for (at, ch) in cluster.char_indices() {
                    let name = format!("-{ch}");
                    if SHORT_WITH_VALUE.contains(ch) {
                        let rest = &cluster[at + ch.len_utf8()..];
                        if rest.is_empty() {
                            c.option(&name, args.get(i).map(String::as_str));
                            i += 1;
                        } else {
                            c.option(&name, Some(rest));
                        }
                        break;
                    }
                    c.option(&name, None);
                }
            } else if c.url.is_none() {
                c.url = Some(a.to_string());
            }
        }
        out.push(c);
    }
    out
}

impl Curl {
    /// Whether this invocation reaches `admin`: through its socket for a pipe; to its
    /// address (loopback for a wildcard admin), not through a socket, for TCP.
    pub fn reaches(&self, admin: &Admin) -> bool {
        match admin {
            Admin::Pipe { path } => self.unix_socket.as_deref() == Some(path.as_str()),
            Admin::Tcp { host, port } => {
                let wildcard = host == "0.0.0.0" || host == "::";
                let hosts: Vec<String> = if wildcard {
                    vec!["127.0.0.1".into(), "localhost".into(), "[::1]".into()]
                } else if host.contains(':') {
                    vec![format!("[{host}]")]
                } else {
                    vec![host.clone()]
                };
                let authority = self.authority_and_path().0;
                self.unix_socket.is_none()
                    && hosts.iter().any(|h| authority == format!("{h}:{port}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::curls;
    use crate::bootstrap::Admin;
    use crate::testdata::words;

    #[test]
    fn options_in_every_spelling() {
        let c = curls(&words(&[
            "/usr/bin/curl",
            "-sfm3",
            "-H",
            "x: y",
            "--unix-socket=/s",
            "--request",
            "put",
            "--url",
            "http://h/p?q#f",
        ]));
        assert_eq!(c.len(), 1);
        let c = &c[0];
        assert!(c.fail);
        assert_eq!(c.unix_socket.as_deref(), Some("/s"));
        assert_eq!((c.method().as_str(), c.path()), ("PUT", "/p"));
    }

    #[test]
    fn data_means_post_unless_told() {
        let c = curls(&words(&["curl", "--data-binary", "@f", "h/x"]));
        assert_eq!((c[0].method().as_str(), c[0].path()), ("POST", "/x"));
        let c = curls(&words(&["curl", "-d", "", "-XGET", "h"]));
        assert_eq!((c[0].method().as_str(), c[0].path()), ("GET", "/"));
        assert!(!c[0].fail);
    }

    #[test]
    fn reaches_the_admin_it_names() {
        let pipe = Admin::Pipe { path: "/s".into() };
        let [v4, v6, any] = ["127.0.0.1", "::1", "::"].map(|host| Admin::Tcp {
            host: host.into(),
            port: 9901,
        });
        let c = curls(&words(&[
            "curl",
            "--unix-socket",
            "/s",
            "http://127.0.0.1:9901/",
        ]));
        // Through a socket the URL's host is not dialled.
        assert!(c[0].reaches(&pipe) && !c[0].reaches(&v4));
        let c = curls(&words(&["curl", "http://[::1]:9901/ready"]));
        assert!(c[0].reaches(&v6) && c[0].reaches(&any) && !c[0].reaches(&v4));
        let c = curls(&words(&["curl", "http://localhost:9902/ready"]));
        assert!(!c[0].reaches(&any));
    }

    #[test]
    fn only_curl_in_a_script() {
        let c = curls(&words(&[
            "sh",
            "-c",
            "wget http://x/a; curl -fsS http://x/b && echo curl http://x/c",
        ]));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].path(), "/b");
    }
}
