//! Argument parsers shared by the load binaries (`soak`, `faults`).

use std::time::Duration;

/// `90s`, `10m`, `1h`; a plain number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit() && *c != '.') {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text}: expected a number with s, m or h"))?;
    let seconds = match unit {
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("{text}: unknown unit {other} (use s, m or h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// `512`, `4K`, `1M` (K and M are KiB and MiB).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (number, factor) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 1024),
        Some('M' | 'm') => (&text[..text.len() - 1], 1024 * 1024),
        _ => (text, 1),
    };
    number.parse::<usize>().map(|n| n * factor).map_err(|_| format!("{text}: expected a size such as 512, 4K or 1M"))
}

/// `MIN-MAX` or one size.
pub fn parse_size_range(text: &str) -> Result<(usize, usize), String> {
    let (min, max) = match text.split_once('-') {
        Some((min, max)) => (parse_size(min)?, parse_size(max)?),
        None => (parse_size(text)?, parse_size(text)?),
    };
    if min > max {
        return Err(format!("{text}: the smaller size comes first"));
    }
    Ok((min, max))
}
