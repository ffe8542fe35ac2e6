//! Parsing `{prefix}/{region_code}/{uscc}/{gateway_id}/{stream}` topics.

/// The parts of a gateway topic (topic_layout = "platform").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic<'a> {
    pub region_code: &'a str,
    pub uscc: &'a str,
    pub gateway_id: &'a str,
    pub stream: Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Metrics,
    States,
    Status,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Metrics => "metrics",
            Stream::States => "states",
            Stream::Status => "status",
        }
    }
}

/// Splits `topic` under `prefix`; `None` when it is not a gateway topic
/// of one of the three streams.
pub fn parse<'a>(prefix: &str, topic: &'a str) -> Option<Topic<'a>> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (region_code, uscc, gateway_id, stream) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || [region_code, uscc, gateway_id].iter().any(|p| p.is_empty()) {
        return None;
    }
    let stream = match stream {
        "metrics" => Stream::Metrics,
        "states" => Stream::States,
        "status" => Stream::Status,
        _ => return None,
    };
    Some(Topic {
        region_code,
        uscc,
        gateway_id,
        stream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_under_a_prefix_with_slashes() {
        let t = parse("city/zgsz", "city/zgsz/321003/U1/gw-1/states").unwrap();
        assert_eq!(
            (t.region_code, t.uscc, t.gateway_id, t.stream),
            ("321003", "U1", "gw-1", Stream::States)
        );
        assert_eq!(parse("zgsz", "zgsz/321003/U1/gw-1/telemetry"), None);
        assert_eq!(parse("zgsz", "zgsz/321003/U1/metrics"), None);
        assert_eq!(parse("zgsz", "zgszx/321003/U1/gw/metrics"), None);
        assert_eq!(parse("zgsz", "zgsz/321003//gw/metrics"), None);
    }
}
