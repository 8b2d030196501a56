//! Checks on the identifiers and patterns that come in from clients. The HTTP layer declares the same rules
//! as OpenAPI validators (so Swagger UI shows them); these functions are the ones the code relies on.

/// The longest problem id accepted.
pub const PROBLEM_ID_MAX: usize = 255;
/// The longest worker id accepted.
pub const WORKER_ID_MAX: usize = 128;

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A problem id: 1–255 of letters, digits, `-`, `_`, `.`, starting with a letter or digit.
pub fn problem_id(s: &str) -> Result<(), String> {
    let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || s.len() > PROBLEM_ID_MAX || !s.chars().all(id_char) {
        return Err(format!(
            "problem_id must be 1-{PROBLEM_ID_MAX} characters of letters, digits, '-', '_' or '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// A worker id: 1–128 of letters, digits, `.`, `_`, `-`.
pub fn worker_id(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > WORKER_ID_MAX || !s.chars().all(id_char) {
        return Err(format!(
            "worker_id must be 1-{WORKER_ID_MAX} characters of letters, digits, '.', '_' or '-'"
        ));
    }
    if s == "internal" {
        return Err("worker_id `internal` is reserved for /api/v1/workers/internal/...".to_owned());
    }
    Ok(())
}

/// The longest instance id accepted.
pub const INSTANCE_ID_MAX: usize = 128;

/// An instance id: 1-128 visible ASCII characters.
pub fn instance_id(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > INSTANCE_ID_MAX || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "instance_id must be 1-{INSTANCE_ID_MAX} visible ASCII characters"
        ));
    }
    Ok(())
}

/// A `supported_problems` pattern: the characters of a problem id plus the wildcards `*` and `?`.
pub fn problem_glob(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > PROBLEM_ID_MAX
        || !s.chars().all(|c| id_char(c) || c == '*' || c == '?')
    {
        return Err(format!(
            "supported_problems pattern `{s}` must be 1-{PROBLEM_ID_MAX} characters of letters, digits, '-', '_', '.', '*' or '?'"
        ));
    }
    Ok(())
}

/// Whether `text` matches `pattern`, where `*` is any run of characters and `?` any one (the wildcards of
/// `supported_problems` and of a worker token's pattern; every other character stands for itself).
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is tried from: backtracking to it is enough.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A worker token's pattern: the characters of a worker id plus the wildcards `*` and `?`.
pub fn worker_pattern(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > WORKER_ID_MAX
        || !s.chars().all(|c| id_char(c) || c == '*' || c == '?')
    {
        return Err(format!(
            "worker pattern `{s}` must be 1-{WORKER_ID_MAX} characters of letters, digits, '-', '_', '.', '*' or '?'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_ids() {
        assert!(problem_id("misconfig_app_hotel_res-detection-1").is_ok());
        assert!(problem_id("a").is_ok());
        assert!(problem_id("").is_err());
        assert!(problem_id("-leading-dash").is_err());
        assert!(problem_id("has space").is_err());
        assert!(problem_id(&"a".repeat(256)).is_err());
        assert!(problem_id(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn worker_ids() {
        assert!(worker_id("worker-001-kind").is_ok());
        assert!(worker_id(".hidden_ok").is_ok());
        assert!(worker_id("").is_err());
        assert!(worker_id("a/b").is_err());
        assert!(worker_id("internal").is_err());
        assert!(worker_id(&"w".repeat(129)).is_err());
    }

    #[test]
    fn glob_matching() {
        assert!(glob_matches("gpu-1-*", "gpu-1-worker"));
        assert!(glob_matches("gpu-1-*", "gpu-1-"));
        assert!(!glob_matches("gpu-1-*", "gpu-10-worker"));
        assert!(!glob_matches("gpu-1-*", "gpu-1"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("*-detection-*", "k8s-detection-1"));
        assert!(glob_matches("a*b*c", "aXbYbZc"));
        assert!(!glob_matches("a*b*c", "aXbYbZ"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
    }

    #[test]
    fn globs() {
        assert!(problem_glob("test-*").is_ok());
        assert!(problem_glob("*-detection-?").is_ok());
        assert!(problem_glob("te[st]").is_err());
        assert!(problem_glob("").is_err());
    }
}

/// A JSON value's kind, as an error message names it ("a string"): never the value itself, which may be long.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The longest `detail` a validation error carries, in bytes.
pub const MAX_DETAIL: usize = 400;

/// `s`, cut to at most `MAX_DETAIL` bytes (at a character boundary) with an ellipsis.
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_DETAIL {
        return s.to_owned();
    }
    let mut end = MAX_DETAIL - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A parse error's message as a client should read it: without poem-openapi's `failed to parse "T": `
/// prefixes, naming the kind of a mismatched value rather than quoting it (it may be the whole body), and at
/// most `MAX_DETAIL` bytes.
pub fn plain_reason(reason: &str) -> String {
    let mut r = reason;
    while let Some((_, after)) = r
        .strip_prefix("failed to parse \"")
        .and_then(|rest| rest.split_once("\": "))
    {
        r = after;
    }
    const FOUND: &str = ", found ";
    if r.starts_with("Expected input type")
        && let Some(i) = r.find(FOUND)
    {
        let value = &r[i + FOUND.len()..];
        let mut values = serde_json::Deserializer::from_str(value).into_iter::<serde_json::Value>();
        if let Some(Ok(v)) = values.next() {
            let rest = &value[values.byte_offset()..];
            return clip(&format!("{}{}{rest}", &r[..i + FOUND.len()], json_kind(&v)));
        }
    }
    clip(r)
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn a_reason_names_the_kind_not_the_value() {
        let long = "x".repeat(5000);
        let reason = format!(
            "Expected input type \"integer_int32\", found \"{long}\". (occurred while parsing \"WorkerCapabilities\")"
        );
        assert_eq!(
            plain_reason(&reason),
            "Expected input type \"integer_int32\", found a string. (occurred while parsing \"WorkerCapabilities\")"
        );
        assert_eq!(
            plain_reason(
                "failed to parse \"A\": failed to parse \"B\": field `name` verification failed. minLength(1)"
            ),
            "field `name` verification failed. minLength(1)"
        );
        assert!(plain_reason(&long).len() <= MAX_DETAIL);
    }

    #[test]
    fn clip_keeps_a_character_whole() {
        let c = clip(&"é".repeat(MAX_DETAIL));
        assert!(c.len() <= MAX_DETAIL && c.ends_with('…'));
    }
}
