//! MinIO config lines: building a `notify_amqp:<ID> key="value" ...` line from a typed AMQP
//! target, and parsing what `get-config-kv` returns so that desired and actual can be compared.
//! Pure: no I/O. Values that hold credentials (the AMQP URL) never reach `Debug` output.
//!
//! MinIO's parser is simple: it finds each `key=` of the subsystem's known keys anywhere in the
//! line, takes the text up to the next one as the value, trims spaces and strips one pair of
//! double quotes, then one pair of single quotes. There is no escaping. So a value must not hold
//! a double quote, a line break, or another key followed by `=`; [`AmqpTarget::validate`] rejects
//! such values instead of letting MinIO store something else than what was asked. On output MinIO
//! writes `key=value`, double-quoted only when the value holds white space, and omits `enable`
//! when it is `on`.

use std::collections::BTreeMap;
use std::fmt;

use bucket_av_core::Redacted;

use crate::Error;

/// The config subsystem of AMQP notification targets.
pub const AMQP_SUBSYSTEM: &str = "notify_amqp";

/// Every key MinIO knows for `notify_amqp`, in the order MinIO lists them.
const AMQP_KEYS: [&str; 15] = [
    "enable",
    "url",
    "exchange",
    "exchange_type",
    "routing_key",
    "mandatory",
    "durable",
    "no_wait",
    "internal",
    "auto_deleted",
    "delivery_mode",
    "publisher_confirms",
    "queue_limit",
    "queue_dir",
    "comment",
];

/// One AMQP notification target as MinIO's admin API configures it. [`AmqpTarget::new`] starts
/// from MinIO's own defaults; note that those publish transient messages (`delivery_mode` 0) to a
/// non-durable exchange and drop events while RabbitMQ is down (no `queue_dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpTarget {
    /// The target ID: the `<ID>` of `notify_amqp:<ID>` and of the ARN `arn:minio:sqs::<ID>:amqp`.
    pub id: String,
    /// `amqp://user:password@host:port/vhost`; MinIO has to reach it when the target is set.
    pub url: Redacted,
    pub exchange: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    pub exchange_type: String,
    pub routing_key: String,
    pub mandatory: bool,
    pub durable: bool,
    pub no_wait: bool,
    pub internal: bool,
    pub auto_deleted: bool,
    /// 1 = transient, 2 = persistent (0 = unset, which RabbitMQ treats as transient).
    pub delivery_mode: u8,
    pub publisher_confirms: bool,
    /// Absolute directory on the MinIO host where undeliverable events wait for RabbitMQ.
    pub queue_dir: Option<String>,
    /// Most events kept in `queue_dir`; 0 leaves MinIO's default (100000).
    pub queue_limit: u64,
}

impl AmqpTarget {
    /// A target with MinIO's defaults for everything but the connection and routing.
    pub fn new(
        id: impl Into<String>,
        url: Redacted,
        exchange: impl Into<String>,
        exchange_type: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            url,
            exchange: exchange.into(),
            exchange_type: exchange_type.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            durable: false,
            no_wait: false,
            internal: false,
            auto_deleted: false,
            delivery_mode: 0,
            publisher_confirms: false,
            queue_dir: None,
            queue_limit: 0,
        }
    }

    /// The config key, `notify_amqp:<ID>`, as `get-config-kv` and `del-config-kv` take it.
    pub fn config_key(&self) -> String {
        format!("{AMQP_SUBSYSTEM}:{}", self.id)
    }

    /// The queue ARN that bucket notification configurations use for this target.
    pub fn arn(&self, region: &str) -> String {
        bucket_av_core::arn::amqp_target_arn(region, &self.id)
    }

    /// Checks that MinIO would store exactly these values (see the module documentation).
    pub fn validate(&self) -> Result<(), Error> {
        validate_target_id(&self.id)?;
        let url = self.url.expose();
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(Error::InvalidTarget { field: "url", reason: "must start with amqp:// or amqps://".into() });
        }
        if self.exchange.is_empty() {
            return Err(Error::InvalidTarget {
                field: "exchange",
                reason: "must be a named exchange: RabbitMQ refuses to let MinIO declare the default exchange".into(),
            });
        }
        if let Some(dir) = &self.queue_dir
            && !dir.starts_with('/')
        {
            return Err(Error::InvalidTarget { field: "queue_dir", reason: "must be an absolute path".into() });
        }
        for (key, value) in self.values() {
            validate_value(key, &value)?;
        }
        Ok(())
    }

    /// The `set-config-kv` line that sets every key of the target (so that nothing is left over
    /// from an earlier configuration), after [`AmqpTarget::validate`].
    pub fn to_config_line(&self) -> Result<String, Error> {
        self.validate()?;
        let mut line = self.config_key();
        for (key, value) in self.values() {
            line.push(' ');
            line.push_str(key);
            line.push_str("=\"");
            line.push_str(&value);
            line.push('"');
        }
        Ok(line)
    }

    /// The keys whose values in `actual` (read with `get-config-kv`, environment overrides
    /// included) differ from this target; empty when MinIO already runs exactly this
    /// configuration. Names only, no values.
    pub fn differences(&self, actual: &ConfigEntry) -> Vec<&'static str> {
        let mut differing = Vec::new();
        if actual.subsystem != AMQP_SUBSYSTEM || actual.target.as_deref() != Some(self.id.as_str()) {
            differing.push("id");
        }
        for (key, desired) in self.values() {
            let actual_value = actual.effective(key).unwrap_or_else(|| default_value(key));
            let same = match key {
                // MinIO omits `enable` when it is on and accepts any boolean spelling for it.
                "enable" => matches!(actual_value, "on" | "true" | "yes" | "1"),
                // The AMQP target reads these numbers with strconv, so "02" equals "2".
                "delivery_mode" | "queue_limit" => actual_value.parse::<u64>().ok() == desired.parse::<u64>().ok(),
                _ => actual_value == desired.as_str(),
            };
            if !same {
                differing.push(key);
            }
        }
        differing
    }

    /// Every key MinIO knows but `comment`, with this target's value, in MinIO's order. Only
    /// `on` counts as true for the AMQP flags on MinIO's side, so flags are written as on/off.
    fn values(&self) -> [(&'static str, String); 14] {
        let flag = |value: bool| if value { "on" } else { "off" }.to_owned();
        [
            ("enable", "on".to_owned()),
            ("url", self.url.expose().to_owned()),
            ("exchange", self.exchange.clone()),
            ("exchange_type", self.exchange_type.clone()),
            ("routing_key", self.routing_key.clone()),
            ("mandatory", flag(self.mandatory)),
            ("durable", flag(self.durable)),
            ("no_wait", flag(self.no_wait)),
            ("internal", flag(self.internal)),
            ("auto_deleted", flag(self.auto_deleted)),
            ("delivery_mode", self.delivery_mode.to_string()),
            ("publisher_confirms", flag(self.publisher_confirms)),
            ("queue_limit", self.queue_limit.to_string()),
            ("queue_dir", self.queue_dir.clone().unwrap_or_default()),
        ]
    }
}

/// What a key missing from `get-config-kv` output stands for: MinIO leaves out `enable` when it
/// is on, and may leave out empty values.
fn default_value(key: &str) -> &'static str {
    match key {
        "enable" => "on",
        "mandatory" | "durable" | "no_wait" | "internal" | "auto_deleted" | "publisher_confirms" => "off",
        "delivery_mode" | "queue_limit" => "0",
        _ => "",
    }
}

/// A target ID becomes part of a config key, an ARN and environment variable names.
pub fn validate_target_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(Error::InvalidTarget {
            field: "id",
            reason: "must be non-empty and hold only ASCII letters, digits, '_' and '-'".into(),
        });
    }
    Ok(())
}

fn validate_value(key: &'static str, value: &str) -> Result<(), Error> {
    let invalid = |reason: &str| Err(Error::InvalidTarget { field: key, reason: reason.to_owned() });
    if value.chars().any(|c| c == '"' || c.is_control()) {
        return invalid(
            "must not hold a double quote or a control character (MinIO's config lines cannot escape them)",
        );
    }
    if value.starts_with('\'') || value.ends_with('\'') {
        return invalid("must not start or end with a single quote (MinIO strips it)");
    }
    if value != value.trim() {
        return invalid("must not start or end with white space (MinIO trims it)");
    }
    if AMQP_KEYS.iter().any(|other| value.contains(&format!("{other}="))) {
        return invalid("must not contain another config key followed by '=' (MinIO would split the value there)");
    }
    Ok(())
}

/// One `subsystem[:target] key=value ...` line of `get-config-kv` output, with the environment
/// variables MinIO reports for it (as `# NAME=value` lines; those override the stored values).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ConfigEntry {
    pub subsystem: String,
    /// `None` for the subsystem's default target.
    pub target: Option<String>,
    pub values: BTreeMap<String, String>,
    pub env_overrides: BTreeMap<String, String>,
}

impl fmt::Debug for ConfigEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |map: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            map.iter()
                .map(|(key, value)| {
                    let shown = if is_sensitive(key) { "<redacted>".to_owned() } else { value.clone() };
                    (key.clone(), shown)
                })
                .collect()
        };
        f.debug_struct("ConfigEntry")
            .field("subsystem", &self.subsystem)
            .field("target", &self.target)
            .field("values", &redacted(&self.values))
            .field("env_overrides", &redacted(&self.env_overrides))
            .finish()
    }
}

impl ConfigEntry {
    /// The value MinIO runs with: the environment variable MinIO reports for the key (named
    /// `MINIO_<SUBSYSTEM>_<KEY>_<TARGET>`) wins over the stored value.
    pub fn effective(&self, key: &str) -> Option<&str> {
        let mut env_name = format!("MINIO_{}_{}", self.subsystem, key).to_ascii_uppercase();
        if let Some(target) = &self.target {
            env_name.push('_');
            env_name.push_str(target);
        }
        self.env_overrides.get(&env_name).or_else(|| self.values.get(key)).map(String::as_str)
    }
}

/// Keys whose values may carry credentials, in any subsystem.
fn is_sensitive(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.split('_').any(|word| word == "url")
        || ["password", "secret", "token", "brokers", "connection_string", "client_key"]
            .iter()
            .any(|word| key.contains(word))
}

/// Parses `get-config-kv` output: one entry per configuration line, environment comment lines
/// attached to the entry that follows them.
/// `api sync_events` from parsed `get-config-kv api` output: the environment variable when the
/// server has one (it wins over the stored value), else the stored value; off when absent.
pub fn sync_events_enabled(entries: &[ConfigEntry]) -> bool {
    entries
        .iter()
        .filter(|entry| entry.subsystem == "api")
        .any(|entry| entry.effective("sync_events").is_some_and(|value| value.eq_ignore_ascii_case("on")))
}

pub fn parse_config_kv(text: &str) -> Result<Vec<ConfigEntry>, Error> {
    let mut entries = Vec::new();
    let mut env_overrides = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if let Some((name, value)) = comment.trim().split_once('=') {
                env_overrides.insert(name.to_owned(), value.to_owned());
            }
            continue;
        }
        let parse_error = |reason: &'static str| Error::ParseConfig { line: index + 1, reason };
        let (head, mut rest) = line.split_once(' ').unwrap_or((line, ""));
        let (subsystem, target) = match head.split_once(':') {
            Some((subsystem, target)) => (subsystem, Some(target.to_owned())),
            None => (head, None),
        };
        if subsystem.is_empty() {
            return Err(parse_error("the line has no subsystem"));
        }
        let mut values = BTreeMap::new();
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            let (key, after) = rest.split_once('=').ok_or_else(|| parse_error("a field has no '='"))?;
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(parse_error("a field has no key before '='"));
            }
            let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
                quoted.split_once('"').ok_or_else(|| parse_error("a quoted value has no closing quote"))?
            } else {
                after.split_once(' ').unwrap_or((after, ""))
            };
            values.insert(key.to_owned(), value.to_owned());
            rest = after;
        }
        entries.push(ConfigEntry {
            subsystem: subsystem.to_owned(),
            target,
            values,
            env_overrides: std::mem::take(&mut env_overrides),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_events_comes_from_the_environment_first_then_the_stored_value() {
        let stored_off = "api requests_max=0 sync_events=off root_access=on\n";
        assert!(!sync_events_enabled(&parse_config_kv(stored_off).unwrap()));
        let stored_on = "api requests_max=0 sync_events=on\n";
        assert!(sync_events_enabled(&parse_config_kv(stored_on).unwrap()));
        let env_on = "# MINIO_API_SYNC_EVENTS=on\napi requests_max=0 sync_events=off\n";
        assert!(sync_events_enabled(&parse_config_kv(env_on).unwrap()));
        let env_off = "# MINIO_API_SYNC_EVENTS=off\napi sync_events=on\n";
        assert!(!sync_events_enabled(&parse_config_kv(env_off).unwrap()));
        assert!(!sync_events_enabled(&parse_config_kv("api requests_max=0\n").unwrap()));
    }

    fn durable_target() -> AmqpTarget {
        AmqpTarget {
            durable: true,
            delivery_mode: 2,
            publisher_confirms: true,
            queue_dir: Some("/var/lib/minio/events".into()),
            queue_limit: 50000,
            ..AmqpTarget::new(
                "SCAN",
                Redacted::new("amqp://user:pa55@rabbit:5672/%2f"),
                "bucket-av.events",
                "direct",
                "scan",
            )
        }
    }

    #[test]
    fn config_lines_quote_every_value_and_set_every_key() {
        let line = durable_target().to_config_line().unwrap();
        assert_eq!(
            line,
            "notify_amqp:SCAN enable=\"on\" url=\"amqp://user:pa55@rabbit:5672/%2f\" exchange=\"bucket-av.events\" \
             exchange_type=\"direct\" routing_key=\"scan\" mandatory=\"off\" durable=\"on\" no_wait=\"off\" \
             internal=\"off\" auto_deleted=\"off\" delivery_mode=\"2\" publisher_confirms=\"on\" \
             queue_limit=\"50000\" queue_dir=\"/var/lib/minio/events\""
        );
    }

    #[test]
    fn values_minio_would_split_or_strip_are_rejected() {
        type Change = fn(&mut AmqpTarget);
        let cases: [(&str, Change); 7] = [
            ("id", |t| t.id = "A:B".into()),
            ("routing_key", |t| t.routing_key = "a\"b".into()),
            ("routing_key", |t| t.routing_key = "x durable=on".into()),
            ("exchange", |t| t.exchange = "'quoted'".into()),
            ("exchange", |t| t.exchange = String::new()),
            ("queue_dir", |t| t.queue_dir = Some("relative/dir".into())),
            ("url", |t| t.url = Redacted::new("http://rabbit")),
        ];
        for (field, change) in cases {
            let mut target = durable_target();
            change(&mut target);
            match target.to_config_line() {
                Err(Error::InvalidTarget { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected {field} to be rejected, got {other:?}"),
            }
        }
    }

    /// The shape MinIO's `get-config-kv` writes: no `enable` when on, quotes only around values
    /// with white space, environment overrides as comments before the line.
    #[test]
    fn get_config_kv_output_parses_and_compares_equal_to_what_was_set() {
        let text = "# MINIO_NOTIFY_AMQP_URL_SCAN=amqp://u:p@other:5672\n\
                    notify_amqp:SCAN url=amqp://user:pa55@rabbit:5672/%2f exchange=bucket-av.events exchange_type=direct \
                    routing_key=scan mandatory=off durable=on no_wait=off internal=off auto_deleted=off delivery_mode=2 \
                    publisher_confirms=on queue_limit=50000 queue_dir=/var/lib/minio/events comment=\"set by the operator\" \n";
        let entries = parse_config_kv(text).unwrap();
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_eq!(entry.subsystem, "notify_amqp");
        assert_eq!(entry.target.as_deref(), Some("SCAN"));
        assert_eq!(entry.values["comment"], "set by the operator");
        assert_eq!(entry.env_overrides["MINIO_NOTIFY_AMQP_URL_SCAN"], "amqp://u:p@other:5672");
        assert_eq!(durable_target().differences(entry), ["url"], "the environment variable wins");
        let entry = &ConfigEntry { env_overrides: BTreeMap::new(), ..entry.clone() };
        assert_eq!(durable_target().differences(entry), Vec::<&str>::new());

        let mut other = durable_target();
        other.delivery_mode = 1;
        other.url = Redacted::new("amqp://user:new@rabbit:5672/%2f");
        assert_eq!(other.differences(entry), ["url", "delivery_mode"]);

        let mut disabled = entry.clone();
        disabled.values.insert("enable".into(), "off".into());
        assert_eq!(durable_target().differences(&disabled), ["enable"]);
    }

    #[test]
    fn debug_output_hides_urls_and_passwords() {
        let entries = parse_config_kv(
            "# MINIO_NOTIFY_AMQP_URL_X=amqp://u:envpass@h\nnotify_amqp:X url=amqp://u:pa55@h exchange=e\n",
        )
        .unwrap();
        let shown = format!("{entries:?} {:?}", durable_target());
        assert!(!shown.contains("pa55") && !shown.contains("envpass"), "{shown}");
        assert!(shown.contains("exchange"));
    }

    #[test]
    fn broken_lines_are_reported_by_number_without_their_content() {
        let error = parse_config_kv("notify_amqp:X url=\"amqp://u:secret@h\n").unwrap_err();
        assert!(matches!(error, Error::ParseConfig { line: 1, .. }));
        assert!(!error.to_string().contains("secret"));
    }
}
