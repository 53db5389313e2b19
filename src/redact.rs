//! Credentials are never shown: a shared ledger's URL as it may appear in a message, a log line,
//! a `repr` or a report, with its password replaced by `***` (issue 18). The real URL is kept
//! only where it is used: the connection options of the fleet.

/// What replaces a secret.
pub const MASK: &str = "***";

/// `location` as it may be shown: in each URL of it (a cluster's seeds are comma-separated) the
/// password of the userinfo (`redis://user:secret@host` -> `redis://user:***@host`, a bare
/// `redis://secret@host` -> `redis://***@host`) and the value of any query parameter whose name
/// holds "pass" (`unix:///sock?pass=secret`) are replaced by `***`. Text that is no URL, or does
/// not parse as one, is masked the same way as far as it goes, never shown whole.
pub fn redact_url(location: &str) -> String {
    location
        .split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_query(url);
    };
    let start = scheme_end + 3;
    let rest = &url[start..];
    // The userinfo ends at the last '@' before the query: a password pasted unescaped may hold
    // '/', ':' or '@' of its own, and all of it is hidden.
    let query_at = rest.find(['?', '#']).unwrap_or(rest.len());
    let mut shown = String::with_capacity(url.len());
    shown.push_str(&url[..start]);
    let after_userinfo = match rest[..query_at].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                shown.push_str(&userinfo[..=colon]);
            }
            shown.push_str(MASK);
            &rest[at..]
        }
        None => rest,
    };
    shown.push_str(&redact_query(after_userinfo));
    shown
}

/// `text` with the value of every `name=value` query parameter whose name holds "pass" masked.
fn redact_query(text: &str) -> String {
    let Some(query_at) = text.find('?') else {
        return text.to_string();
    };
    let (head, query) = text.split_at(query_at + 1);
    let parameters: Vec<String> = query
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().contains("pass") => {
                format!("{name}={MASK}")
            }
            _ => parameter.to_string(),
        })
        .collect();
    format!("{head}{}", parameters.join("&"))
}

/// The secrets of `location` as a server or a library may echo them back: each password, as
/// written and percent-decoded. Empty when it holds none.
pub fn secrets_of(location: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    for url in location.split(',') {
        let Some(scheme_end) = url.find("://") else {
            continue;
        };
        let rest = &url[scheme_end + 3..];
        let query_at = rest.find(['?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..query_at].rfind('@') {
            let userinfo = &rest[..at];
            let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
            secrets.push(password.to_string());
        }
        for parameter in rest[query_at..].trim_start_matches(['?', '#']).split('&') {
            if let Some((name, value)) = parameter.split_once('=') {
                if name.to_ascii_lowercase().contains("pass") {
                    secrets.push(value.to_string());
                }
            }
        }
    }
    let decoded: Vec<String> = secrets.iter().map(|s| percent_decoded(s)).collect();
    secrets.extend(decoded);
    secrets.retain(|s| !s.is_empty());
    secrets.sort();
    secrets.dedup();
    secrets
}

/// `message` with every secret of `location` in it masked: for text built from a library's
/// error, which may quote what it was given.
pub fn scrub(message: &str, location: &str) -> String {
    let mut secrets = secrets_of(location);
    // Longest first, so that a secret holding another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut scrubbed = message.to_string();
    for secret in &secrets {
        scrubbed = scrubbed.replace(secret.as_str(), MASK);
    }
    // The URL itself may be quoted in a form the secrets above do not match (re-encoded).
    if scrubbed.contains(location) && location != redact_url(location) {
        scrubbed = scrubbed.replace(location, &redact_url(location));
    }
    scrubbed
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[at] == b'%' && at + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[at + 1]), hex(bytes[at + 2])) {
                out.push((high * 16 + low) as u8);
                at += 3;
                continue;
            }
        }
        out.push(bytes[at]);
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_shown() {
        let cases = [
            ("redis://:SECRET@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://user:SECRET@host/0", "redis://user:***@host/0"),
            ("redis://SECRET@host", "redis://***@host"),
            ("rediss://u:SE/CR@ET@h:1/2", "rediss://u:***@h:1/2"),
            ("redis://host:6379/0", "redis://host:6379/0"),
            (
                "redis+unix:///run/r.sock?db=1&pass=SECRET",
                "redis+unix:///run/r.sock?db=1&pass=***",
            ),
            (
                "unix:///r.sock?password=SECRET",
                "unix:///r.sock?password=***",
            ),
            (
                "redis://:SECRET@a:7000,redis://:SECRET@b:7001",
                "redis://:***@a:7000,redis://:***@b:7001",
            ),
            ("not a url :SECRET@", "not a url :SECRET@"),
            ("redis://:SECRET@", "redis://:***@"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn secrets_are_scrubbed_from_messages_as_written_and_decoded() {
        let url = "redis://:p%40ss@host:1/0";
        assert_eq!(
            secrets_of(url),
            vec!["p%40ss".to_string(), "p@ss".to_string()]
        );
        let message = format!("cannot connect to {url}: auth p@ss refused (p%40ss)");
        let scrubbed = scrub(&message, url);
        assert!(
            !scrubbed.contains("p@ss") && !scrubbed.contains("p%40ss"),
            "{scrubbed}"
        );
        assert_eq!(scrub("no secret here", "redis://host"), "no secret here");
    }
}
