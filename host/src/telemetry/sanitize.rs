//! The built-in sanitiser: the last step for every client-visible error text and every
//! forwarded agent stderr line. It removes terminal escapes and control characters, hides
//! credentials in URLs, and bounds the length.

pub const MAX_TEXT: usize = 2048;

pub fn sanitize(text: &str) -> String {
    if is_clean(text) {
        return text.to_string();
    }
    let stripped = strip_controls(text);
    let masked = mask_url_credentials(&stripped);
    truncate(masked, MAX_TEXT)
}

/// Whether `sanitize` would return `text` unchanged: no control character, no URL that could
/// carry credentials, within the length. Most span attributes are, and need no copy.
pub fn is_clean(text: &str) -> bool {
    text.len() <= MAX_TEXT && !text.chars().any(char::is_control) && !text.contains("://")
}

fn strip_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // ESC starts a CSI/OSC sequence: skip it whole rather than leave its payload behind.
            '\u{1b}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\n' | '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `scheme://user:pass@host` -> `scheme://***@host`.
fn mask_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_escapes_controls_and_credentials() {
        let s =
            sanitize("\u{1b}[31mfailed\u{1b}[0m: GET https://bob:hunter2@example.com/x\u{7}\nnext");
        assert_eq!(s, "failed: GET https://***@example.com/x next");
        assert_eq!(sanitize("\u{1b}]0;title\u{7}ok"), "ok");
        assert!(is_clean("plain text, no controls") && !is_clean("a\tb") && !is_clean("x://y"));
        assert_eq!(
            sanitize("no creds at http://host/a@b"),
            "no creds at http://host/a@b"
        );
    }

    #[test]
    fn bounds_length_on_a_char_boundary() {
        let s = sanitize(&"é".repeat(5000));
        assert!(s.len() <= MAX_TEXT + '…'.len_utf8());
        assert!(s.ends_with('…'));
    }
}
