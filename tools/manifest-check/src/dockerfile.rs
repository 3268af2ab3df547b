//! The image's Dockerfile ([`check_dockerfile`]): the runtime stage's user, the packages the
//! capture and the probes need, the entrypoint.

use crate::report::Report;
use crate::value::opt;
use crate::DEFAULT_PROXY_ID;

/// The runtime (last) stage: its USER is the proxy's UID, that user is created with that UID,
/// iptables (capture) and, when `execs` (the proxy's probes and hooks) use it, curl are
/// installed, the entrypoint is switchyard.
pub fn check_dockerfile(text: &str, run_as_user: Option<i64>, execs: &str, r: &mut Report) {
    // Instructions with their continuation lines joined, comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                instructions.push(std::mem::take(&mut cur));
            }
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|i| i.to_ascii_uppercase().starts_with("FROM "));
    let Some(start) = last_from else {
        r.bad("deploy/Dockerfile FROM", "no FROM");
        return;
    };
    let stage = &instructions[start..];
    let of = |kw: &str| -> Vec<&str> {
        stage
            .iter()
            .filter_map(|i| {
                let (head, rest) = i.split_once(char::is_whitespace)?;
                head.eq_ignore_ascii_case(kw).then_some(rest.trim())
            })
            .collect()
    };
    let want_uid = run_as_user.unwrap_or(i64::from(DEFAULT_PROXY_ID));
    let user = of("USER").last().map(|u| u.split(':').next().unwrap_or(u));
    r.expect(
        user == Some(want_uid.to_string().as_str()),
        "deploy/Dockerfile runtime stage USER",
        format!(
            "is {}, want the numeric UID {want_uid} (runAsUser, capture -u)",
            opt(user)
        ),
    );
    let runs = of("RUN").join(" ; ");
    // The shell commands of the RUN instructions, one by one.
    let commands: Vec<Vec<&str>> = runs
        .split([';', '|'])
        .flat_map(|s| s.split("&&"))
        .map(|c| c.split_whitespace().collect())
        .collect();
    let want = want_uid.to_string();
    let created = commands.iter().any(|c| {
        c.first() == Some(&"useradd")
            && c.windows(2)
                .any(|w| (w[0] == "--uid" || w[0] == "-u") && w[1] == want)
    });
    r.expect(
        created,
        "deploy/Dockerfile runtime stage RUN useradd",
        format!("no `useradd --uid {want_uid}`"),
    );
    let installs = |pkg: &str| {
        commands
            .iter()
            .any(|c| c.windows(2).any(|w| w == ["apt-get", "install"]) && c.contains(&pkg))
    };
    r.expect(
        installs("iptables"),
        "deploy/Dockerfile runtime stage RUN apt-get install",
        "does not install iptables (switchyard capture drives it)",
    );
    if execs.contains("curl") {
        r.expect(
            installs("curl"),
            "deploy/Dockerfile runtime stage RUN apt-get install",
            "does not install curl (the probes and the preStop hook use it)",
        );
    }
    let entrypoint = of("ENTRYPOINT").last().copied().unwrap_or_default();
    r.expect(
        entrypoint.contains("switchyard"),
        "deploy/Dockerfile runtime stage ENTRYPOINT",
        format!("is {entrypoint:?}, want switchyard"),
    );
}

#[cfg(test)]
mod tests {
    use super::check_dockerfile;

    const GOOD: &str = include_str!("../testdata/Dockerfile");

    fn problems(text: &str, execs: &str) -> Vec<String> {
        let mut r = crate::Report::default();
        check_dockerfile(text, Some(1337), execs, &mut r);
        r.0
    }

    #[track_caller]
    fn rejects(from: &str, to: &str, field: &str) {
        assert_eq!(problems(GOOD, "curl"), Vec::<String>::new());
        let bad = GOOD.replace(from, to);
        assert_ne!(bad, GOOD, "{from:?} is not in testdata/Dockerfile");
        let p = problems(&bad, "curl");
        assert!(
            p.iter()
                .any(|p| p.starts_with(&format!("deploy/Dockerfile runtime stage {field}: "))),
            "{from:?} -> {to:?}: {p:?}"
        );
    }

    #[test]
    fn runs_as_the_proxy_uid() {
        rejects("USER 1337:1337", "USER root", "USER");
        rejects("USER 1337:1337\n", "", "USER");
        // The build stage's USER does not count, the last one of the runtime stage does.
        assert!(problems(&GOOD.replace("AS build\n", "AS build\nUSER 0\n"), "").is_empty());
    }

    #[test]
    fn creates_the_user() {
        rejects("--uid 1337", "--uid 1000", "RUN useradd");
        rejects("useradd", "adduser", "RUN useradd");
    }

    #[test]
    fn installs_iptables_and_curl_when_used() {
        rejects(" iptables ", " ", "RUN apt-get install");
        rejects(" curl ", " ", "RUN apt-get install");
        assert!(problems(&GOOD.replace(" curl ", " "), "wget -q x").is_empty());
    }

    #[test]
    fn entrypoint_is_switchyard() {
        rejects("/usr/local/bin/switchyard", "/bin/sh", "ENTRYPOINT");
    }

    #[test]
    fn needs_a_from() {
        let p = problems("# nothing\nRUN true\n", "");
        assert_eq!(p, ["deploy/Dockerfile FROM: no FROM"]);
    }
}
