//! Request parameters as Prometheus reads them: from the query string and, for
//! form-encoded POSTs, the body; times and durations in Prometheus' notations.

use strata_query::duration::parse_duration_ms;

use super::ApiError;

/// All parameters of a request, in order, repeated names kept (`match[]`).
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Parameters from a query string and an optional form-encoded body.
    pub(crate) fn parse(query: Option<&str>, form: Option<&[u8]>) -> Self {
        let mut v: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            v.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        if let Some(b) = form {
            v.extend(form_urlencoded::parse(b).into_owned());
        }
        Params(v)
    }

    /// The first value of `name` that is not empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A required time parameter.
    pub(crate) fn time(&self, name: &str) -> Result<i64, ApiError> {
        let raw = self.get(name).unwrap_or("");
        parse_time_ms(raw).ok_or_else(|| {
            ApiError::bad_data(format!(
                "invalid parameter \"{name}\": cannot parse \"{raw}\" to a valid timestamp"
            ))
        })
    }

    /// An optional time parameter with a default.
    pub(crate) fn time_or(&self, name: &str, default: i64) -> Result<i64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(_) => self.time(name),
        }
    }

    /// A required duration parameter, in milliseconds.
    pub(crate) fn duration(&self, name: &str) -> Result<i64, ApiError> {
        let raw = self.get(name).unwrap_or("");
        parse_duration_param(raw).ok_or_else(|| {
            ApiError::bad_data(format!(
                "invalid parameter \"{name}\": cannot parse \"{raw}\" to a valid duration"
            ))
        })
    }

    /// An optional non-negative integer limit; 0 or absent means none.
    pub(crate) fn limit(&self) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(0),
            Some(raw) => raw.parse::<usize>().map_err(|_| {
                ApiError::bad_data(format!(
                    "invalid parameter \"limit\": cannot parse \"{raw}\" to a valid limit"
                ))
            }),
        }
    }
}

/// What Prometheus formats as its lowest and highest times; clients send them back.
const MIN_TIME_TEXT: &str = "-292273086-05-16T16:47:04.192Z";
const MAX_TIME_TEXT: &str = "292277025-08-18T07:12:54.999Z";

/// Unix seconds with an optional fraction, or RFC 3339. Milliseconds.
pub(crate) fn parse_time_ms(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() {
            return None;
        }
        let ms = (secs * 1000.0).round();
        // Out-of-range times are clamped, as Prometheus does for its min/max times.
        return Some(ms.clamp(i64::MIN as f64, i64::MAX as f64) as i64);
    }
    match s {
        MIN_TIME_TEXT => return Some(i64::MIN / 2),
        MAX_TIME_TEXT => return Some(i64::MAX / 2),
        _ => {}
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Seconds with an optional fraction, or a Prometheus duration (`5m`). Milliseconds.
pub(crate) fn parse_duration_param(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<f64>() {
        let ms = (secs * 1000.0).round();
        if !ms.is_finite() || ms.abs() >= i64::MAX as f64 {
            return None;
        }
        return Some(ms as i64);
    }
    parse_duration_ms(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time_ms("1435781451.781"), Some(1_435_781_451_781));
        assert_eq!(parse_time_ms("1435781451"), Some(1_435_781_451_000));
        assert_eq!(
            parse_time_ms("2015-07-01T20:10:51.781Z"),
            Some(1_435_781_451_781)
        );
        assert_eq!(
            parse_time_ms("2015-07-01T22:10:51+02:00"),
            Some(1_435_781_451_000)
        );
        assert_eq!(parse_time_ms("yesterday"), None);
        assert_eq!(parse_time_ms("NaN"), None);
        assert_eq!(parse_time_ms(""), None);
        assert!(parse_time_ms(MIN_TIME_TEXT).is_some());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_param("15"), Some(15_000));
        assert_eq!(parse_duration_param("0.5"), Some(500));
        assert_eq!(parse_duration_param("5m"), Some(300_000));
        assert_eq!(parse_duration_param("1e300"), None);
        assert_eq!(parse_duration_param("x"), None);
    }

    #[test]
    fn query_and_form_merge() {
        let p = Params::parse(
            Some("match[]=up&time=1"),
            Some(b"match[]=foo%7Bjob%3D%22a%22%7D"),
        );
        assert_eq!(p.all("match[]"), vec!["up", "foo{job=\"a\"}"]);
        assert_eq!(p.get("time"), Some("1"));
    }
}
