//! The shell-word reader: the simple commands of an exec `command` (`sh -c SCRIPT` split at
//! `;`, `&`, `|` and newlines, quotes removed).

/// The simple commands of an exec `command`: the words themselves, or for `sh -c SCRIPT`
/// (any `*sh`) the script split at `;`, `&`, `|` and newlines outside quotes, each split into
/// words with the quotes removed (enough for the hooks and probes of a manifest; no
/// expansions).
pub fn simple_commands(command: &[String]) -> Vec<Vec<String>> {
    let script = match command {
        [sh, c, script, ..] if sh.ends_with("sh") && c == "-c" => script,
        _ => return vec![command.to_vec()],
    };
    let mut commands = Vec::new();
    let (mut words, mut word) = (Vec::new(), None::<String>);
    let mut quote = None;
    for ch in script.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(ch);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() && c != '\n' => words.extend(word.take()),
            (None, ';' | '&' | '|' | '\n') => {
                words.extend(word.take());
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if !words.is_empty() {
        commands.push(words);
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::simple_commands;
    use crate::testdata::words;

    #[test]
    fn words_without_a_shell_are_one_command() {
        let command = words(&["curl", "-f", "a b", "x;y"]);
        assert_eq!(simple_commands(&command), vec![command]);
    }

    #[test]
    fn a_script_splits_at_separators_outside_quotes() {
        let got = simple_commands(&words(&[
            "/bin/sh",
            "-c",
            "a 1; b '2; 3' && c \"4 | 5\"|d\ne  ;;  ",
        ]));
        assert_eq!(
            got,
            vec![
                words(&["a", "1"]),
                words(&["b", "2; 3"]),
                words(&["c", "4 | 5"]),
                words(&["d"]),
                words(&["e"]),
            ]
        );
    }

    #[test]
    fn quotes_join_and_empty_quotes_are_a_word() {
        let got = simple_commands(&words(&["bash", "-c", "curl -d '' x'y z'\"w\""]));
        assert_eq!(got, vec![words(&["curl", "-d", "", "xy zw"])]);
    }

    #[test]
    fn no_expansion_and_only_dash_c() {
        let got = simple_commands(&words(&["sh", "-c", "echo $HOME ${X} `id`"]));
        assert_eq!(got, vec![words(&["echo", "$HOME", "${X}", "`id`"])]);
        // `sh script.sh` is a command of its own, not a script to split.
        let command = words(&["sh", "script.sh; x"]);
        assert_eq!(simple_commands(&command), vec![command]);
    }
}
