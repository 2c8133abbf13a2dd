//! Query-string parsing shared by the APIs and pages: paging, times, lists, page links.
//! Every error names the parameter and the value.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use super::error::{ApiError, ApiResult};
use crate::store::truncate_to_micros;

/// The query string's pairs, in order (percent-decoded).
pub type Pairs = Vec<(String, String)>;

pub fn pairs(q: Result<Query<Pairs>, QueryRejection>) -> ApiResult<Pairs> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {}", e.body_text())))
}

/// Default and largest page size.
pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub page: u64,
    pub limit: u32,
}

impl Paging {
    pub fn offset(&self) -> u64 {
        self.page.saturating_mul(u64::from(self.limit))
    }
}

/// `page` (0-based) and `limit` from the pairs, tolerated as ResultsDB tolerates them: a
/// negative page is page 0; a limit of 0 or less gives an empty page (with a `next` link when
/// a row exists, as ResultsDB answers `limit=0`); a limit over [`MAX_LIMIT`] is served as
/// `MAX_LIMIT` (ResultsDB has no maximum). Only a value that is not a number is refused.
pub fn paging(pairs: &Pairs, default_limit: u32) -> ApiResult<Paging> {
    let mut p = Paging {
        page: 0,
        limit: default_limit,
    };
    for (k, v) in pairs {
        match k.as_str() {
            "page" => {
                let page = integer(v).ok_or_else(|| {
                    ApiError::invalid(
                        "page",
                        format!("page: `{v}` is not a page number (0, 1, 2, …)"),
                    )
                })?;
                p.page = u64::try_from(page.max(0)).unwrap_or(u64::MAX);
                if p.page > i64::MAX as u64 / u64::from(MAX_LIMIT) {
                    return Err(ApiError::invalid(
                        "page",
                        format!("page: `{v}` is too large"),
                    ));
                }
            }
            "limit" => {
                let limit = integer(v).ok_or_else(|| {
                    ApiError::invalid("limit", format!("limit: `{v}` is not a number"))
                })?;
                p.limit = u32::try_from(limit.clamp(0, i128::from(MAX_LIMIT))).unwrap_or(0);
            }
            _ => {}
        }
    }
    Ok(p)
}

/// An integer as Python's `int()` reads one (surrounding spaces, a sign); any size.
fn integer(v: &str) -> Option<i128> {
    let t = v.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Saturate what does not fit: only its sign matters to the clamps above.
    Some(t.parse().unwrap_or(if t.starts_with('-') {
        i128::MIN
    } else {
        i128::MAX
    }))
}

/// `a,b,,c` → `[a, b, c]`.
pub fn csv(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// An ISO 8601 time: `2025-01-12`, `2025-01-12T11:20[:35[.448757]]` (UTC when no offset is
/// given, as ResultsDB), or RFC 3339 with `Z`/offset. Returns microseconds since the epoch.
pub fn parse_time(param: &str, s: &str) -> ApiResult<i64> {
    parse_datetime(s)
        .map(|t| crate::store::truncate_to_micros(t).unix_timestamp_nanos() as i64 / 1000)
        .ok_or_else(|| {
            ApiError::invalid(
                param,
                format!(
                    "{param}: `{s}` is not an ISO 8601 date or time (e.g. 2025-01-12 or 2025-01-12T11:20:35)"
                ),
            )
        })
}

fn parse_datetime(s: &str) -> Option<OffsetDateTime> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    // An hours-only offset (`+00`, as PostgreSQL prints timestamps; ResultsDB accepts it).
    if let Some(t) = hours_offset(s).and_then(|full| OffsetDateTime::parse(&full, &Rfc3339).ok()) {
        return Some(t);
    }
    if let Ok(d) = Date::parse(s, format_description!("[year]-[month]-[day]")) {
        return Some(PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc());
    }
    let s = s.replacen(' ', "T", 1);
    let formats = [
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"),
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        format_description!("[year]-[month]-[day]T[hour]:[minute]"),
    ];
    let naive = s.strip_suffix('Z').unwrap_or(&s);
    formats
        .iter()
        .find_map(|f| PrimitiveDateTime::parse(naive, f).ok())
        .map(PrimitiveDateTime::assume_utc)
}

/// `…T11:20:35+00` or `…+0000` → `…+00:00`: the offsets Python's `%z` and ResultsDB's
/// literal `+00` take but RFC 3339 does not (None when `s` ends in neither after a time).
fn hours_offset(s: &str) -> Option<String> {
    [3, 5].into_iter().find_map(|n| {
        let (head, tail) = s.split_at_checked(s.len().checked_sub(n)?)?;
        let (sign, digits) = tail.split_at_checked(1)?;
        let ok = matches!(sign, "+" | "-")
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (head.contains('T') || head.contains(' '))
            && head.contains(':');
        ok.then(|| {
            let (hh, mm) = digits.split_at(2);
            let mm = if mm.is_empty() { "00" } else { mm };
            format!("{}{sign}{hh}:{mm}", head.replacen(' ', "T", 1))
        })
    })
}

/// `since=START[,END]`.
pub fn since(v: &str) -> ApiResult<(i64, Option<i64>)> {
    let (start, end) = match v.split_once(',') {
        Some((a, b)) => (a, Some(b)),
        None => (v, None),
    };
    let from = parse_time("since", start)?;
    let to = end.map(|e| parse_time("since", e)).transpose()?;
    Ok((from, to))
}

/// ResultsDB's time format: ISO 8601 in UTC without an offset, microseconds when non-zero.
pub fn fmt_time(t: OffsetDateTime) -> String {
    let t = truncate_to_micros(t).to_offset(UtcOffset::UTC);
    let base = crate::util::utc_seconds(t, 'T');
    match t.microsecond() {
        0 => base,
        us => format!("{base}.{us:06}"),
    }
}

/// Percent-encodes for a query string component (`,`, `:` and `*` stay readable; a
/// space is `+`).
pub fn encode(s: &str) -> String {
    // A literal "%20" in `s` was encoded as "%2520", so this replaces only spaces.
    crate::util::percent_encode(s, b",:*").replace("%20", "+")
}

/// Percent-encodes one URL path segment.
pub fn seg(s: &str) -> String {
    crate::util::percent_encode(s, b"")
}

/// Percent-encodes for one URL path segment (a space is `%20` there, not `+`).
pub fn encode_segment(s: &str) -> String {
    encode(s).replace('+', "%20")
}

/// `k=v&…` from pairs.
pub fn encode_query<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Absolute prev/next URLs: the original query with `page` replaced.
pub fn page_links(
    base: &str,
    pairs: &Pairs,
    paging: Paging,
    has_next: bool,
) -> (Option<String>, Option<String>) {
    let link = |page: u64| {
        let page = page.to_string();
        let q = encode_query(
            pairs
                .iter()
                .filter(|(k, _)| k != "page")
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .chain([("page", page.as_str())]),
        );
        format!("{base}?{q}")
    };
    let prev = (paging.page > 0).then(|| link(paging.page - 1));
    let next = has_next.then(|| link(paging.page + 1));
    (prev, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn times_parse_like_resultsdb() {
        let t = |s| parse_time("since", s).unwrap();
        assert_eq!(t("2025-01-12"), 1_736_640_000_000_000);
        assert_eq!(t("2025-01-12T11:20:35"), 1_736_680_835_000_000);
        assert_eq!(t("2025-01-12 11:20:35.5"), 1_736_680_835_500_000);
        assert_eq!(t("2025-01-12T11:20"), 1_736_680_800_000_000);
        assert_eq!(t("2025-01-12T13:20:35+02:00"), 1_736_680_835_000_000);
        assert_eq!(t("2025-01-12T11:20:35Z"), 1_736_680_835_000_000);
        assert_eq!(t("2025-01-12T11:20:35.5+00"), 1_736_680_835_500_000);
        assert_eq!(t("2025-01-12T13:20:35+02"), 1_736_680_835_000_000);
        assert_eq!(t("2025-01-12 13:20:35.5+0200"), 1_736_680_835_500_000);
        assert!(parse_time("since", "2025-01-12+00").is_err());
        let e = parse_time("since", "notadate").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("since") && e.message.contains("notadate"));
        let (a, b) = since("2025-01-12,2025-01-13").unwrap();
        assert_eq!(b.unwrap() - a, 86_400_000_000);
        assert!(since("2025-01-12,x").is_err());
    }

    #[test]
    fn times_format_like_resultsdb() {
        assert_eq!(
            fmt_time(datetime!(2025-01-12 11:20:35 UTC)),
            "2025-01-12T11:20:35"
        );
        assert_eq!(
            fmt_time(datetime!(2025-01-12 20:20:55.448757 UTC)),
            "2025-01-12T20:20:55.448757"
        );
        assert_eq!(
            fmt_time(datetime!(2025-01-12 22:20:55 +02:00)),
            "2025-01-12T20:20:55"
        );
    }

    #[test]
    fn paging_tolerates_what_resultsdb_tolerates() {
        let p = |q: &[(&str, &str)]| {
            paging(
                &q.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                20,
            )
        };
        assert_eq!(p(&[]).unwrap(), Paging { page: 0, limit: 20 });
        assert_eq!(p(&[("page", "3"), ("limit", "5")]).unwrap().offset(), 15);
        assert_eq!(p(&[("page", "-1")]).unwrap().page, 0);
        assert_eq!(p(&[("limit", "0")]).unwrap().limit, 0);
        assert_eq!(p(&[("limit", "-1")]).unwrap().limit, 0);
        assert_eq!(p(&[("limit", " +7 ")]).unwrap().limit, 7);
        assert_eq!(p(&[("limit", "1000000")]).unwrap().limit, MAX_LIMIT);
        assert_eq!(
            p(&[("limit", "99999999999999999999999999999999999999999")])
                .unwrap()
                .limit,
            MAX_LIMIT
        );
        for (k, v) in [
            ("page", "x"),
            ("limit", "x"),
            ("limit", "1.5"),
            ("page", "99999999999999999999"),
        ] {
            let e = p(&[(k, v)]).unwrap_err();
            assert!(
                e.message.starts_with(k) && e.message.contains(v),
                "{}",
                e.message
            );
            assert_eq!(e.field.as_deref(), Some(k));
        }
    }

    #[test]
    fn links_keep_the_query_and_replace_page() {
        let pairs: Pairs = vec![
            ("item".into(), "a b&c".into()),
            ("page".into(), "1".into()),
            ("testcases:like".into(), "x*".into()),
        ];
        let (prev, next) = page_links(
            "http://h/api/v2.0/results",
            &pairs,
            Paging { page: 1, limit: 20 },
            true,
        );
        assert_eq!(
            prev.unwrap(),
            "http://h/api/v2.0/results?item=a+b%26c&testcases:like=x*&page=0"
        );
        assert!(next.unwrap().ends_with("&page=2"));
        let (prev, next) = page_links("http://h/x", &pairs, Paging { page: 0, limit: 20 }, false);
        assert!(prev.is_none() && next.is_none());
    }
}
