//! The sizes a worker keeps what it reports within, so that the server never refuses a report (a refused
//! outcome would lose the run, and a lost run comes back: it would loop), and the cleaning of text that
//! PostgreSQL cannot store (NUL). The worker applies them to everything a runner produced before it is sent;
//! docs/runner-protocol.md lists them with what happens at each.

use serde_json::{Map, Value, json};

use crate::api::NewLogEntry;

/// A runner output line is read up to this many bytes; the rest of a longer line is skipped (marked).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// A log message, in characters; longer ones are cut (marked).
pub const MAX_MESSAGE_CHARS: usize = 16_000;
/// A log entry's context, as JSON bytes; a larger one is replaced by a preview (marked).
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024;
/// A failure's error, in characters (with the runner's last stderr lines); longer ones keep their start and
/// their end.
pub const MAX_ERROR_CHARS: usize = 16_000;
/// One batch of log entries, as JSON bytes (the server takes bodies up to 1 MiB).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A result, as JSON bytes; a larger one keeps its summary (`success`, `output` cut, small `metrics`) and
/// says what was dropped.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

/// Appended where text was cut.
pub const CUT: &str = " …[truncated]";

/// Replaces NUL, which PostgreSQL cannot store in text, by U+FFFD.
pub fn clean_text(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
    }
}

/// [`clean_text`] on every string and key of a JSON value.
pub fn clean_json(v: &mut Value) {
    match v {
        Value::String(s) => clean_text(s),
        Value::Array(items) => items.iter_mut().for_each(clean_json),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (mut k, v) in old {
                    clean_text(&mut k);
                    map.insert(k, v);
                }
            }
            map.values_mut().for_each(clean_json);
        }
        _ => {}
    }
}

/// Cuts `s` to at most `max` characters, marking the cut.
pub fn fit_text(s: &mut String, max: usize) {
    if let Some((at, _)) = s.char_indices().nth(max) {
        s.truncate(at);
        s.push_str(CUT);
    }
}

/// Cuts `s` to about `max` characters keeping its first quarter and its end (where the last stderr lines of a
/// failure are), marking the cut.
pub fn fit_head_and_tail(s: &mut String, max: usize) {
    let n = s.chars().count();
    if n <= max {
        return;
    }
    let head: String = s.chars().take(max / 4).collect();
    let tail: String = s.chars().skip(n - (max - max / 4)).collect();
    *s = format!("{head} …[{} characters cut]… {tail}", n - max);
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
}

/// A log entry as it may be sent: clean, its message and context within their limits.
pub fn fit_entry(e: &mut NewLogEntry) {
    clean_text(&mut e.message);
    fit_text(&mut e.message, MAX_MESSAGE_CHARS);
    if let Some(c) = &mut e.context {
        clean_json(c);
        let len = json_len(c);
        if len > MAX_CONTEXT_BYTES {
            let mut preview = c.to_string();
            fit_text(&mut preview, MAX_CONTEXT_BYTES / 4);
            *c = json!({"truncated": true, "original_bytes": len, "preview": preview});
        }
    }
}

/// The JSON size of an entry, for cutting batches.
pub fn entry_len(e: &NewLogEntry) -> usize {
    serde_json::to_vec(e)
        .map(|b| b.len())
        .unwrap_or(MAX_BATCH_BYTES)
}

/// A result as it may be sent: clean, and within [`MAX_RESULT_BYTES`]: a larger one keeps `success`, its
/// `output` cut, its `metrics` when they are small, and `truncated` saying how large it was.
pub fn fit_result(r: &mut Map<String, Value>) {
    let mut v = Value::Object(std::mem::take(r));
    clean_json(&mut v);
    let Value::Object(mut map) = v else {
        unreachable!("an object stays an object")
    };
    let len = json_len(&Value::Object(map.clone()));
    if len > MAX_RESULT_BYTES {
        let mut kept = Map::new();
        for key in ["success", "simulated"] {
            if let Some(v) = map.remove(key) {
                kept.insert(key.to_owned(), v);
            }
        }
        if let Some(Value::String(mut out)) = map.remove("output") {
            fit_text(&mut out, MAX_MESSAGE_CHARS);
            kept.insert("output".to_owned(), Value::String(out));
        }
        for (key, most) in [
            ("metrics", MAX_RESULT_BYTES / 4),
            ("provenance", MAX_RESULT_BYTES / 8),
        ] {
            if let Some(m) = map.remove(key)
                && json_len(&m) <= most
            {
                kept.insert(key.to_owned(), m);
            }
        }
        let dropped: Vec<Value> = map.keys().cloned().map(Value::String).collect();
        kept.insert(
            "truncated".to_owned(),
            json!({"original_bytes": len, "limit_bytes": MAX_RESULT_BYTES, "dropped_keys": dropped}),
        );
        map = kept;
    }
    *r = map;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LogLevel;

    #[test]
    fn nul_is_replaced_everywhere() {
        let mut v = json!({"a\u{0}b": ["x\u{0}", {"k": "\u{0}"}], "n": 1});
        clean_json(&mut v);
        assert_eq!(
            v,
            json!({"a\u{FFFD}b": ["x\u{FFFD}", {"k": "\u{FFFD}"}], "n": 1})
        );
    }

    #[test]
    fn entries_fit() {
        let mut e = NewLogEntry {
            timestamp: None,
            level: LogLevel::Info,
            message: "é".repeat(MAX_MESSAGE_CHARS + 10).into(),
            context: Some(json!({"big": "x".repeat(MAX_CONTEXT_BYTES * 2)})),
        };
        fit_entry(&mut e);
        assert!(e.message.ends_with(CUT));
        assert_eq!(
            e.message.chars().count(),
            MAX_MESSAGE_CHARS + CUT.chars().count()
        );
        let c = e.context.unwrap();
        assert_eq!(c["truncated"], true);
        assert!(json_len(&c) < MAX_CONTEXT_BYTES);
    }

    #[test]
    fn errors_keep_their_start_and_end() {
        let mut s = format!("START{}END", "m".repeat(100_000));
        fit_head_and_tail(&mut s, MAX_ERROR_CHARS);
        assert!(s.starts_with("START") && s.ends_with("END"));
        assert!(s.chars().count() < MAX_ERROR_CHARS + 100);
    }

    #[test]
    fn results_fit_and_keep_their_summary() {
        let mut r = json!({"success": true, "output": "o".repeat(50_000), "metrics": {"TTD": 1.5},
                           "history": "h".repeat(MAX_RESULT_BYTES * 2)})
        .as_object()
        .unwrap()
        .clone();
        fit_result(&mut r);
        assert_eq!(r["success"], true);
        assert_eq!(r["metrics"]["TTD"], 1.5);
        assert!(r["output"].as_str().unwrap().ends_with(CUT));
        assert_eq!(r["truncated"]["dropped_keys"], json!(["history"]));
        assert!(json_len(&Value::Object(r)) < MAX_RESULT_BYTES);
        let mut small = json!({"success": false}).as_object().unwrap().clone();
        fit_result(&mut small);
        assert_eq!(small, *json!({"success": false}).as_object().unwrap());
    }
}
