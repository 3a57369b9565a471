//! Durations as people type them on a command line (`90s`, `15m`, `24h`, `7d`, `500ms`).
//! A bare number is seconds; `0` is allowed (callers decide what it means, e.g. "off").
use std::time::Duration;

/// `500ms`, `90s`, `15m`, `24h`, `7d`, or a number of seconds (fractions allowed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let secs_per_unit = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * secs_per_unit < 1e12 => {
            Ok(Duration::from_secs_f64(v * secs_per_unit))
        }
        _ => Err(format!(
            "{s:?} is not a duration (e.g. 500ms, 90s, 15m, 24h, 7d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("1e300d").is_err());
    }
}
