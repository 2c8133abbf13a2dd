//! Small helpers that several layers need, written once. A leaf: it names nothing else of
//! ferrotron's, so any module may use it.

use std::time::Duration;

use base64::Engine as _;

/// `850ms`, `4.21s`, `3m07s`: short and unambiguous for logs.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// Quotes `s` for `/bin/sh` so that it is one word whatever it contains.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `s` as one shell word for a person to read: unquoted when that is safe.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@+,%".contains(&b))
    {
        s.to_string()
    } else {
        shell_quote(s)
    }
}

/// Percent-encodes every byte but RFC 3986's unreserved ones and those in `keep`.
pub fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Compares secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64, padding optional; `None` on anything else.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(s).ok()
}

/// Standard base64 with padding.
pub fn base64_encode(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Retries `op` up to `attempts` times (at least once), sleeping `base·2ⁿ` (at most `cap`)
/// between tries; the last error is returned. For in-process retries of a call that may
/// fail for a moment (a destroy, a store write); the scheduler's persisted job backoff is
/// its own.
pub async fn retry<T, E, F, Fut>(
    attempts: u32,
    base: Duration,
    cap: Duration,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let attempts = attempts.max(1);
    let mut n = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if n + 1 >= attempts => return Err(e),
            Err(_) => {
                let wait = base.saturating_mul(1u32 << n.min(16)).min(cap);
                tokio::time::sleep(wait).await;
                n += 1;
            }
        }
    }
}

/// The URL with its password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// `t` in UTC to the second, `YYYY-MM-DD{sep}HH:MM:SS`, no offset: ResultsDB's times and
/// JUnit's timestamps with `T`, the pages' with a space.
pub fn utc_seconds(t: time::OffsetDateTime, sep: char) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}{sep}{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The longest prefix of `s` at most `max` bytes long that ends on a character boundary:
/// for capping text from outside without splitting a character (and so without a panic).
pub fn truncate_at(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` for XML 1.0 element content and quoted attribute values: the five markup characters
/// as entities, and every character XML 1.0 forbids (C0 controls but tab, newline and
/// carriage return; U+FFFE, U+FFFF) or discourages (DEL, C1 controls) made visible as
/// `\x1b` / `\u{fffe}`, as the run log shows them: one such character from outside would
/// make the whole document unreadable to a conforming parser.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 || ('\u{7f}'..='\u{9f}').contains(&c) => {
                o.push_str(&format!("\\x{:02x}", c as u32));
            }
            '\u{fffe}' | '\u{ffff}' => o.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

/// This machine's host name (`localhost` when the kernel does not say).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// An error and its causes on one line, `outer: inner: …`, each cause written once: many
/// library errors already print their source in their own message, and printing the chain
/// as-is would say the same thing two or three times.
pub fn error_chain<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut out = String::new();
    for e in chain {
        let m = e.to_string();
        if m.is_empty() || out.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
    }
    out
}

/// Bytes an unprivileged writer may still put on the filesystem holding `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: `c` is a valid NUL-terminated string and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between libcs
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_short() {
        assert_eq!(human_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(human_duration(Duration::from_millis(4210)), "4.21s");
        assert_eq!(human_duration(Duration::from_secs(187)), "3m07s");
    }

    #[test]
    fn shell_words_and_quotes() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_word("bash-5.2-1.fc41"), "bash-5.2-1.fc41");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("$(x)"), "'$(x)'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn percent_encoding_keeps_only_what_it_is_told() {
        assert_eq!(percent_encode("a b/ü~", b""), "a%20b%2F%C3%BC~");
        assert_eq!(percent_encode("a,b:c", b",:"), "a,b:c");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@db.example:5432/x?sslmode=require"),
            "postgres://u:***@db.example:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_url("amqp://guest:secret@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact_url("postgres://u@h/x"), "postgres://u@h/x");
        assert_eq!(redact_url("amqp://h/%2f"), "amqp://h/%2f");
        assert_eq!(redact_url("sqlite:///a/b.db"), "sqlite:///a/b.db");
        assert_eq!(redact_url("amqps://u:p@h?x=a@b"), "amqps://u:***@h?x=a@b");
    }

    #[test]
    fn secrets_and_base64() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(base64_decode("dXNlcjpzZWNyZXQ=").unwrap(), b"user:secret");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert!(base64_decode("a b").is_none());
        assert_eq!(
            base64_decode(&base64_encode(b"\x00\xff")).unwrap(),
            b"\x00\xff"
        );
    }

    #[test]
    fn utc_seconds_drop_the_offset_and_the_fraction() {
        let t = time::macros::datetime!(2026-12-04 06:22:32.5 +2);
        assert_eq!(utc_seconds(t, 'T'), "2026-12-04T04:22:32");
        assert_eq!(utc_seconds(t, ' '), "2026-12-04 04:22:32");
    }

    #[test]
    fn truncation_never_splits_a_character() {
        assert_eq!(truncate_at("héllo", 2), "h");
        assert_eq!(truncate_at("héllo", 3), "hé");
        assert_eq!(truncate_at("abc", 10), "abc");
        assert_eq!(truncate_at("", 0), "");
    }

    #[test]
    fn xml_escaping_leaves_no_markup_and_no_forbidden_characters() {
        assert_eq!(
            xml_escape("a<b>&\"c\"'d']]>"),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;]]&gt;"
        );
        assert_eq!(xml_escape("t\tn\nr\r"), "t\tn\nr\r");
        assert_eq!(
            xml_escape("nul\0esc\x1b del\x7f csi\u{9b} \u{fffe}\u{ffff}"),
            "nul\\x00esc\\x1b del\\x7f csi\\x9b \\u{fffe}\\u{ffff}"
        );
        assert_eq!(xml_escape("ü 𝄞 \u{e000}"), "ü 𝄞 \u{e000}");
    }

    #[tokio::test]
    async fn retry_gives_up_after_its_attempts_with_the_last_error() {
        let mut calls = 0;
        let r: Result<(), u32> = retry(
            3,
            Duration::from_millis(1),
            Duration::from_millis(5),
            || {
                calls += 1;
                let n = calls;
                async move { Err(n) }
            },
        )
        .await;
        assert_eq!((r, calls), (Err(3), 3));
        let mut calls = 0;
        let r: Result<u32, ()> = retry(
            3,
            Duration::from_millis(1),
            Duration::from_millis(5),
            || {
                calls += 1;
                let n = calls;
                async move { if n == 2 { Ok(n) } else { Err(()) } }
            },
        )
        .await;
        assert_eq!(r, Ok(2));
    }

    #[test]
    fn free_bytes_reads_the_filesystem_and_names_failures() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        let gone = dir.path().join("gone");
        assert_eq!(
            free_bytes(&gone).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn error_chain_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("connecting to db: {0}")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("bad certificate")]
        struct Inner;
        let e = anyhow::Error::new(Outer(Inner)).context("config.yaml: daemon.db");
        assert_eq!(
            error_chain(e.chain()),
            "config.yaml: daemon.db: connecting to db: bad certificate"
        );
        // Without the repetition, every cause still appears.
        let e = anyhow::Error::new(Inner).context("opening");
        assert_eq!(error_chain(e.chain()), "opening: bad certificate");
    }
}
