//! Small accessors for a parsed manifest (a `serde_json::Value` tree): fields by path, values
//! for messages, a container's `switchyard` words and the flags among them.

use serde_json::Value;

/// A field's value for a message: its JSON, or `unset`.
pub fn shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "unset".to_string(), Value::to_string)
}

/// A parsed value for a message, or `unset`.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unset".to_string(), |v| v.to_string())
}

pub fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

pub fn get_mut<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(v, |v, k| {
        v.get_mut(*k)
            .unwrap_or_else(|| panic!("no field {k:?} on the way to {path:?}"))
    })
}

pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

pub fn array_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// An integer given as a number or as a string of digits (YAML quoting in `args`).
pub fn int_of(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.trim().parse().ok())
}

pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| match s {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A container's words after the `switchyard` program: `command` + `args`, where no `command`
/// means the image's ENTRYPOINT (switchyard). `None` for another program (`chown`).
pub fn switchyard_words(c: &Value) -> Option<Vec<String>> {
    let command = strings(c.get("command"));
    let args = strings(c.get("args"));
    match command.split_first() {
        None => Some(args),
        Some((prog, rest)) if prog == "switchyard" || prog.ends_with("/switchyard") => {
            Some(rest.iter().chain(args.iter()).cloned().collect())
        }
        Some(_) => None,
    }
}

/// Whether container `c` runs `switchyard` with `command` as its first words (`["run"]`,
/// `["capture", "install"]`).
pub fn runs_switchyard(c: &Value, command: &[&str]) -> bool {
    switchyard_words(c)
        .is_some_and(|w| w.len() >= command.len() && w.iter().zip(command).all(|(a, b)| a == b))
}

/// The value of a flag: `-x V`, `--long V` or `--long=V`.
pub fn flag<'a>(words: &'a [String], names: &[&str]) -> Option<&'a str> {
    for (i, w) in words.iter().enumerate() {
        for n in names {
            if w == n {
                return words.get(i + 1).map(String::as_str);
            }
            if let Some(v) = w.strip_prefix(&format!("{n}=")) {
                return Some(v);
            }
        }
    }
    None
}

pub fn has_flag(words: &[String], name: &str) -> bool {
    words.iter().any(|w| w == name)
}

/// A field of the container's securityContext, else of the pod's.
pub fn security<'a>(pod: &'a Value, c: &'a Value, key: &str) -> Option<&'a Value> {
    get(c, &["securityContext", key]).or_else(|| get(pod, &["securityContext", key]))
}

/// The capabilities a container adds, without a `CAP_` prefix.
pub fn capabilities_added(c: &Value) -> Vec<String> {
    strings(get(c, &["securityContext", "capabilities", "add"]))
        .into_iter()
        .map(|s| s.trim_start_matches("CAP_").to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_in_every_spelling() {
        let w: Vec<String> = ["run", "-c", "/b.yaml", "--drain-time-s=3", "--x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(flag(&w, &["-c", "--config-path"]), Some("/b.yaml"));
        assert_eq!(flag(&w, &["--drain-time-s"]), Some("3"));
        assert_eq!(flag(&w, &["--x"]), None, "a flag without its value");
        assert_eq!(flag(&w, &["-p"]), None);
        assert!(has_flag(&w, "--x") && !has_flag(&w, "-p"));
    }

    #[test]
    fn switchyard_words_follow_the_entrypoint() {
        let c = json!({"args": ["run", "-c", "x"]});
        assert_eq!(switchyard_words(&c).unwrap(), ["run", "-c", "x"]);
        let c = json!({"command": ["/usr/local/bin/switchyard", "capture"], "args": ["install"]});
        assert_eq!(switchyard_words(&c).unwrap(), ["capture", "install"]);
        assert_eq!(
            switchyard_words(&json!({"command": ["chown", "1:1"]})),
            None
        );
    }

    #[test]
    fn integers_quoted_or_not() {
        assert_eq!(int_of(&json!(5)), Some(5));
        assert_eq!(int_of(&json!(" 15001 ")), Some(15001));
        assert_eq!(int_of(&json!("x")), None);
        assert_eq!(strings(Some(&json!(["a", 1, true]))), ["a", "1", "true"]);
        assert_eq!(shown(None), "unset");
        assert_eq!(opt(Some(3)), "3");
    }

    #[test]
    fn security_context_of_the_container_else_the_pod() {
        let pod = json!({"securityContext": {"runAsUser": 1, "runAsGroup": 2}});
        let c = json!({"securityContext": {"runAsUser": 3,
                       "capabilities": {"add": ["CAP_NET_RAW", "NET_ADMIN"]}}});
        assert_eq!(security(&pod, &c, "runAsUser"), Some(&json!(3)));
        assert_eq!(security(&pod, &c, "runAsGroup"), Some(&json!(2)));
        assert_eq!(capabilities_added(&c), ["NET_RAW", "NET_ADMIN"]);
    }
}
