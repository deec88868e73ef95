//! One typed `Settings`, read from the environment (and `.env`) once at
//! start-up and validated there, so a misconfiguration stops the process
//! with a message that says what to set.
//!
//! Platform variables (`PORT`, `CLOUDAMQP_URL`) are mapped here and
//! nowhere else. Secrets are wrapped so they never print.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("{0}")]
    Role(String),
}

/// Which queue carries hits from `web` to the consumers.
#[derive(Debug, Clone)]
pub enum QueueSettings {
    /// Embedded durable log under `TALLY_DATA_DIR/queue`; one process only.
    Local,
    /// RabbitMQ; many `web` and `worker` processes share it.
    RabbitMq(RabbitMqSettings),
}

#[derive(Debug, Clone)]
pub struct RabbitMqSettings {
    pub url: SecretString,
    /// Prefix of every exchange and queue name (tests use their own).
    pub prefix: String,
    /// Unacked messages a consumer may hold.
    pub prefetch: u16,
}

#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// SQLite file `TALLY_DATA_DIR/tally.sqlite3`.
    Sqlite,
    Cassandra(CassandraSettings),
}

#[derive(Debug, Clone)]
pub struct CassandraSettings {
    pub contact_points: Vec<String>,
    pub keyspace: String,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub replication_factor: u32,
    pub local_dc: Option<String>,
    /// `LOCAL_QUORUM` unless `CASSANDRA_CONSISTENCY` says otherwise.
    pub consistency: String,
    /// Visitors of one attributor batch written at once
    /// (`CASSANDRA_MAX_IN_FLIGHT`, default 64).
    pub max_in_flight: usize,
}

#[derive(Debug, Clone)]
pub enum ArchiveSettings {
    /// Directory `TALLY_DATA_DIR/archive`.
    Local,
    S3(S3Settings),
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// When the archiver closes a batch into an object.
#[derive(Debug, Clone)]
pub struct ArchiverSettings {
    pub max_hits: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub queue: QueueSettings,
    pub store: StoreSettings,
    pub archive: ArchiveSettings,
    pub archiver: ArchiverSettings,
    /// Bytes the embedded queue may hold that a consumer has not acked yet
    /// (`QUEUE_MAX_BYTES`). Past it `/collect` answers 503 instead of
    /// filling the disk while a backend (S3, the store) is down.
    pub queue_max_bytes: u64,
    pub log_filter: String,
    pub log_format: LogFormat,
    /// How long shutdown may take before in-flight work is abandoned
    /// (it stays in the queue). Heroku kills at 30 s.
    pub shutdown_grace: Duration,
    /// HTTP worker threads (`WEB_CONCURRENCY`, which Heroku sets by dyno
    /// size); `None` lets actix-web use one per physical core.
    pub http_workers: Option<usize>,
    /// The nice value (0-19) of the consumers' threads in `tally all`
    /// (`CONSUMER_NICE`, default 0: equals with the web threads). Higher
    /// answers `/collect` first under load and leaves the difference in
    /// the queue, so counting falls further behind while the load lasts
    /// (the README, under `CONSUMER_NICE`, has the measured trade-off).
    /// `tally worker` ignores it.
    pub consumer_nice: u8,
    /// What the HTTP edge trusts and limits.
    pub edge: EdgeSettings,
    /// How long a dashboard session lasts after sign-in
    /// (`SESSION_MAX_AGE_HOURS`, default 7 days): the cookie's max-age and
    /// the stored session's expiry.
    pub session_max_age: Duration,
    /// Where the attributor's referrer lists come from.
    pub referrers: ReferrerSettings,
}

/// The lists that name untagged referrals and channels: the embedded
/// ones unless a directory or file is given (read once at start-up, so a
/// refresh needs a restart, not a rebuild).
#[derive(Debug, Clone, Default)]
pub struct ReferrerSettings {
    /// `TALLY_REFERRER_LISTS`: a directory holding `SearchEngines.yml` and
    /// `Socials.yml` in Matomo's format.
    pub lists_dir: Option<PathBuf>,
    /// `TALLY_SOURCE_CATEGORIES`: Google's source-categories CSV, which
    /// adds GA4's video and shopping sites.
    pub source_categories: Option<PathBuf>,
}

/// What the HTTP edge trusts and limits (the "Security and privacy"
/// section of the README says why each exists).
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Proxies in front that each append the address they saw to
    /// `X-Forwarded-For` (`TRUSTED_PROXY_HOPS`; Heroku's router: 1). The
    /// client is the Nth address from the right; 0 means the TCP peer is
    /// the client and the header is ignored (anyone can write it).
    pub trusted_proxy_hops: usize,
    /// Hits per second per client address on `/collect`
    /// (`RATE_LIMIT_PER_IP`); `None` means no limit.
    pub rate_limit_per_ip: Option<std::num::NonZeroU32>,
    /// Sign-in attempts (`POST /session`) per minute per client address
    /// (`SIGNIN_ATTEMPTS_PER_MINUTE`, default 10; 0 turns it off: `None`).
    /// Counted in this process only: behind a router spreading requests
    /// over N web processes an address gets up to N times as many. That
    /// is acceptable because the limit exists to make guessing an API key
    /// (238 random bits) by volume impossible, and N times a few attempts
    /// a minute is as hopeless; a shared counter would put a store round
    /// trip before every sign-in for nothing.
    pub signin_attempts_per_minute: Option<std::num::NonZeroU32>,
    /// Live streams (`GET /api/v1/live`) one site may hold open at once in
    /// this process (`LIVE_STREAMS_PER_SITE`, default 20; 0 turns the cap
    /// off: `None`). Each stream holds a connection and a subscription.
    pub live_streams_per_site: Option<std::num::NonZeroU32>,
    /// When set, `/metrics` wants `Authorization: Bearer <token>`.
    pub metrics_token: Option<SecretString>,
    /// Longest wait for the next piece of a request body before the
    /// request is answered 408. API.md allows at most 10 s; actix then
    /// lingers up to 1 s (`client_disconnect_timeout`) before the answer
    /// leaves a connection whose body was not read to the end, so 9 s.
    pub body_stall_timeout: Duration,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            trusted_proxy_hops: 0,
            rate_limit_per_ip: None,
            signin_attempts_per_minute: std::num::NonZeroU32::new(10),
            live_streams_per_site: std::num::NonZeroU32::new(20),
            metrics_token: None,
            body_stall_timeout: Duration::from_secs(9),
        }
    }
}

/// How long a dashboard session lasts unless `SESSION_MAX_AGE_HOURS`
/// says otherwise: a week.
const DEFAULT_SESSION_HOURS: u64 = 7 * 24;
/// The longest dashboard session `SESSION_MAX_AGE_HOURS` allows: a year.
const MAX_SESSION_HOURS: u64 = 366 * 24;

impl Settings {
    /// Embedded defaults rooted at `data_dir`: what `tally all` uses with
    /// no configuration, and what tests start from.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Settings {
        Settings {
            host: "0.0.0.0".into(),
            port: 8080,
            data_dir: data_dir.into(),
            queue: QueueSettings::Local,
            store: StoreSettings::Sqlite,
            archive: ArchiveSettings::Local,
            archiver: ArchiverSettings {
                max_hits: 10_000,
                max_bytes: 8 << 20,
                max_age: Duration::from_secs(5),
            },
            queue_max_bytes: 1 << 30,
            log_filter: "info".into(),
            log_format: LogFormat::Pretty,
            shutdown_grace: Duration::from_secs(25),
            http_workers: None,
            consumer_nice: 0,
            edge: EdgeSettings::default(),
            session_max_age: Duration::from_secs(DEFAULT_SESSION_HOURS * 3600),
            referrers: ReferrerSettings::default(),
        }
    }

    /// Reads the process environment (call `dotenvy::dotenv()` first).
    pub fn from_env() -> Result<Settings, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Builds settings from any variable lookup, so tests need not touch
    /// the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let mut s = Settings::embedded(get("TALLY_DATA_DIR").unwrap_or_else(|| "./data".into()));
        if let Some(p) = get("PORT") {
            s.port = parse("PORT", &p)?;
        }
        s.referrers = ReferrerSettings {
            lists_dir: get("TALLY_REFERRER_LISTS").map(PathBuf::from),
            source_categories: get("TALLY_SOURCE_CATEGORIES").map(PathBuf::from),
        };
        if let Some(h) = get("HOST") {
            s.host = h;
        }
        if let Some(url) = get("AMQP_URL").or_else(|| get("CLOUDAMQP_URL")) {
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(ConfigError::Invalid {
                    var: "AMQP_URL",
                    reason: "must start with amqp:// or amqps://".into(),
                });
            }
            s.queue = QueueSettings::RabbitMq(RabbitMqSettings {
                url: SecretString::from(url),
                prefix: get("AMQP_PREFIX").unwrap_or_else(|| "tally".into()),
                prefetch: match get("AMQP_PREFETCH") {
                    Some(v) => parse("AMQP_PREFETCH", &v)?,
                    None => 2_000,
                },
            });
        }
        if let Some(points) = get("CASSANDRA_CONTACT_POINTS") {
            let contact_points: Vec<String> = points
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect();
            s.store = StoreSettings::Cassandra(CassandraSettings {
                contact_points,
                keyspace: get("CASSANDRA_KEYSPACE").unwrap_or_else(|| "tally".into()),
                username: get("CASSANDRA_USERNAME"),
                password: get("CASSANDRA_PASSWORD").map(SecretString::from),
                replication_factor: match get("CASSANDRA_REPLICATION_FACTOR") {
                    Some(v) => parse("CASSANDRA_REPLICATION_FACTOR", &v)?,
                    None => 1,
                },
                local_dc: get("CASSANDRA_LOCAL_DC"),
                consistency: get("CASSANDRA_CONSISTENCY").unwrap_or_else(|| "LOCAL_QUORUM".into()),
                max_in_flight: match get("CASSANDRA_MAX_IN_FLIGHT") {
                    Some(v) => parse("CASSANDRA_MAX_IN_FLIGHT", &v)?,
                    None => 64,
                },
            });
        }
        if let Some(bucket) = get("S3_BUCKET") {
            let mut prefix = get("S3_PREFIX").unwrap_or_else(|| "hits/".into());
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            s.archive = ArchiveSettings::S3(S3Settings {
                bucket,
                prefix,
                endpoint: get("S3_ENDPOINT"),
                region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
            });
        }
        if let Some(v) = get("ARCHIVE_BATCH_HITS") {
            s.archiver.max_hits = parse("ARCHIVE_BATCH_HITS", &v)?;
        }
        if let Some(v) = get("ARCHIVE_BATCH_BYTES") {
            s.archiver.max_bytes = parse("ARCHIVE_BATCH_BYTES", &v)?;
        }
        if let Some(v) = get("ARCHIVE_BATCH_SECONDS") {
            s.archiver.max_age = Duration::from_secs_f64(parse("ARCHIVE_BATCH_SECONDS", &v)?);
        }
        if let Some(v) = get("QUEUE_MAX_BYTES") {
            s.queue_max_bytes = parse("QUEUE_MAX_BYTES", &v)?;
            if s.queue_max_bytes == 0 {
                return Err(ConfigError::Invalid {
                    var: "QUEUE_MAX_BYTES",
                    reason: "must be more than 0".into(),
                });
            }
        }
        if let Some(v) = get("WEB_CONCURRENCY") {
            let n: usize = parse("WEB_CONCURRENCY", &v)?;
            if n == 0 {
                return Err(ConfigError::Invalid {
                    var: "WEB_CONCURRENCY",
                    reason: "must be at least 1".into(),
                });
            }
            s.http_workers = Some(n);
        }
        if let Some(v) = get("CONSUMER_NICE") {
            s.consumer_nice = parse("CONSUMER_NICE", &v)?;
            if s.consumer_nice > 19 {
                return Err(ConfigError::Invalid {
                    var: "CONSUMER_NICE",
                    reason: "must be 0 to 19 (higher runs the consumers at a lower priority)"
                        .into(),
                });
            }
        }
        if let Some(v) = get("TRUSTED_PROXY_HOPS") {
            s.edge.trusted_proxy_hops = parse("TRUSTED_PROXY_HOPS", &v)?;
            if s.edge.trusted_proxy_hops > 16 {
                return Err(ConfigError::Invalid {
                    var: "TRUSTED_PROXY_HOPS",
                    reason: "must be 0 to 16 (the proxies in front of tally)".into(),
                });
            }
        }
        if let Some(v) = get("RATE_LIMIT_PER_IP") {
            s.edge.rate_limit_per_ip =
                Some(
                    parse("RATE_LIMIT_PER_IP", &v).map_err(|_| ConfigError::Invalid {
                        var: "RATE_LIMIT_PER_IP",
                        reason: format!("`{v}` is not a whole number of hits per second above 0"),
                    })?,
                );
        }
        if let Some(v) = get("SIGNIN_ATTEMPTS_PER_MINUTE") {
            let n: u32 =
                parse("SIGNIN_ATTEMPTS_PER_MINUTE", &v).map_err(|_| ConfigError::Invalid {
                    var: "SIGNIN_ATTEMPTS_PER_MINUTE",
                    reason: format!(
                        "`{v}` is not a whole number of attempts per minute (0 turns the limit off)"
                    ),
                })?;
            s.edge.signin_attempts_per_minute = std::num::NonZeroU32::new(n);
        }
        if let Some(v) = get("LIVE_STREAMS_PER_SITE") {
            let n: u32 = parse("LIVE_STREAMS_PER_SITE", &v).map_err(|_| ConfigError::Invalid {
                var: "LIVE_STREAMS_PER_SITE",
                reason: format!(
                    "`{v}` is not a whole number of open streams (0 turns the cap off)"
                ),
            })?;
            s.edge.live_streams_per_site = std::num::NonZeroU32::new(n);
        }
        s.edge.metrics_token = get("METRICS_TOKEN").map(SecretString::from);
        if let Some(v) = get("SESSION_MAX_AGE_HOURS") {
            let hours: u64 = parse("SESSION_MAX_AGE_HOURS", &v)?;
            if !(1..=MAX_SESSION_HOURS).contains(&hours) {
                return Err(ConfigError::Invalid {
                    var: "SESSION_MAX_AGE_HOURS",
                    reason: format!("must be 1 to {MAX_SESSION_HOURS} (a year)"),
                });
            }
            s.session_max_age = Duration::from_secs(hours * 3600);
        }
        if let Some(v) = get("RUST_LOG") {
            s.log_filter = v;
        }
        s.log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "LOG_FORMAT",
                    reason: format!("`{other}` is not `json` or `pretty`"),
                })
            }
        };
        Ok(s)
    }

    /// Refuses roles that cannot work with these adapters.
    pub fn validate_for(&self, role: Role) -> Result<(), ConfigError> {
        let shared = matches!(self.queue, QueueSettings::RabbitMq(_));
        if matches!(role, Role::Web | Role::Worker) && !shared {
            return Err(ConfigError::Role(format!(
                "`tally {}` runs apart from its partner process, so it needs a shared queue: \
                 set AMQP_URL (or CLOUDAMQP_URL) to a RabbitMQ server, or run `tally all` \
                 for one process on the embedded queue",
                role.as_str()
            )));
        }
        Ok(())
    }

    pub fn amqp_url(&self) -> Option<&str> {
        match &self.queue {
            QueueSettings::RabbitMq(r) => Some(r.url.expose_secret()),
            QueueSettings::Local => None,
        }
    }
}

/// What a process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Web and worker in one process (the laptop default).
    All,
    /// HTTP only: collect, API, health.
    Web,
    /// Consumers only: attributor and archiver.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Web => "web",
            Role::Worker => "worker",
        }
    }
    pub fn serves_http(self) -> bool {
        matches!(self, Role::All | Role::Web)
    }
    pub fn consumes(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

fn parse<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
        var,
        reason: format!("`{v}`: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn empty_environment_gives_embedded_defaults() {
        let s = from(&[]).unwrap();
        assert_eq!(s.port, 8080);
        assert!(matches!(s.queue, QueueSettings::Local));
        assert!(matches!(s.store, StoreSettings::Sqlite));
        assert!(matches!(s.archive, ArchiveSettings::Local));
        s.validate_for(Role::All).unwrap();
    }

    #[test]
    fn web_without_shared_queue_refuses_and_says_what_to_set() {
        let err = from(&[]).unwrap().validate_for(Role::Web).unwrap_err();
        assert!(err.to_string().contains("AMQP_URL"), "{err}");
        let s = from(&[("CLOUDAMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")]).unwrap();
        s.validate_for(Role::Web).unwrap();
        assert!(
            !format!("{s:?}").contains("guest:guest"),
            "secret leaked in Debug"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = from(&[("PORT", "http")]).unwrap_err();
        assert!(err.to_string().starts_with("PORT"), "{err}");
        let err = from(&[("AMQP_URL", "localhost")]).unwrap_err();
        assert!(err.to_string().contains("amqp://"), "{err}");
        let err = from(&[("QUEUE_MAX_BYTES", "0")]).unwrap_err();
        assert!(err.to_string().starts_with("QUEUE_MAX_BYTES"), "{err}");
        assert_eq!(
            from(&[("QUEUE_MAX_BYTES", "4096")])
                .unwrap()
                .queue_max_bytes,
            4096
        );
        for bad in ["0", "two"] {
            let err = from(&[("WEB_CONCURRENCY", bad)]).unwrap_err();
            assert!(err.to_string().starts_with("WEB_CONCURRENCY"), "{err}");
        }
        assert_eq!(from(&[]).unwrap().http_workers, None);
        assert_eq!(
            from(&[("WEB_CONCURRENCY", "3")]).unwrap().http_workers,
            Some(3)
        );
    }

    #[test]
    fn consumer_nice_defaults_to_0_and_stays_within_nice_values() {
        assert_eq!(from(&[]).unwrap().consumer_nice, 0);
        assert_eq!(from(&[("CONSUMER_NICE", "19")]).unwrap().consumer_nice, 19);
        for bad in ["20", "-1", "low"] {
            let err = from(&[("CONSUMER_NICE", bad)]).unwrap_err().to_string();
            assert!(err.contains("CONSUMER_NICE"), "{bad}: {err}");
        }
    }

    #[test]
    fn edge_settings_default_to_trusting_nothing_and_limiting_nothing() {
        let s = from(&[]).unwrap();
        assert_eq!(s.edge.trusted_proxy_hops, 0);
        assert!(s.edge.rate_limit_per_ip.is_none());
        assert!(s.edge.metrics_token.is_none());
        let s = from(&[
            ("TRUSTED_PROXY_HOPS", "1"),
            ("RATE_LIMIT_PER_IP", "20"),
            ("METRICS_TOKEN", "sekrit"),
        ])
        .unwrap();
        assert_eq!(s.edge.trusted_proxy_hops, 1);
        assert_eq!(s.edge.rate_limit_per_ip.map(|n| n.get()), Some(20));
        assert!(
            !format!("{s:?}").contains("sekrit"),
            "token leaked in Debug"
        );
        for (var, bad) in [
            ("RATE_LIMIT_PER_IP", "0"),
            ("RATE_LIMIT_PER_IP", "lots"),
            ("TRUSTED_PROXY_HOPS", "-1"),
            ("TRUSTED_PROXY_HOPS", "99"),
        ] {
            let err = from(&[(var, bad)]).unwrap_err();
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn sessions_last_a_week_unless_set_in_hours() {
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(from(&[]).unwrap().session_max_age, week);
        let s = from(&[("SESSION_MAX_AGE_HOURS", "12")]).unwrap();
        assert_eq!(s.session_max_age, Duration::from_secs(12 * 3600));
        for bad in ["0", "9000", "a week"] {
            let err = from(&[("SESSION_MAX_AGE_HOURS", bad)]).unwrap_err();
            assert!(
                err.to_string().starts_with("SESSION_MAX_AGE_HOURS"),
                "{err}"
            );
        }
    }

    #[test]
    fn sign_in_and_live_stream_limits_are_on_by_default_and_0_turns_them_off() {
        let s = from(&[]).unwrap();
        assert_eq!(s.edge.signin_attempts_per_minute.map(|n| n.get()), Some(10));
        assert_eq!(s.edge.live_streams_per_site.map(|n| n.get()), Some(20));
        let s = from(&[
            ("SIGNIN_ATTEMPTS_PER_MINUTE", "3"),
            ("LIVE_STREAMS_PER_SITE", "2"),
        ])
        .unwrap();
        assert_eq!(s.edge.signin_attempts_per_minute.map(|n| n.get()), Some(3));
        assert_eq!(s.edge.live_streams_per_site.map(|n| n.get()), Some(2));
        let s = from(&[
            ("SIGNIN_ATTEMPTS_PER_MINUTE", "0"),
            ("LIVE_STREAMS_PER_SITE", "0"),
        ])
        .unwrap();
        assert!(s.edge.signin_attempts_per_minute.is_none());
        assert!(s.edge.live_streams_per_site.is_none());
        for var in ["SIGNIN_ATTEMPTS_PER_MINUTE", "LIVE_STREAMS_PER_SITE"] {
            for bad in ["-1", "many"] {
                let err = from(&[(var, bad)]).unwrap_err();
                assert!(err.to_string().starts_with(var), "{err}");
            }
        }
    }

    #[test]
    fn s3_and_cassandra_are_selected_by_their_variables() {
        let s = from(&[
            ("S3_BUCKET", "b"),
            ("S3_PREFIX", "raw"),
            ("CASSANDRA_CONTACT_POINTS", "a:9042, b:9042"),
        ])
        .unwrap();
        let ArchiveSettings::S3(s3) = &s.archive else {
            panic!("not s3")
        };
        assert_eq!(s3.prefix, "raw/");
        let StoreSettings::Cassandra(c) = &s.store else {
            panic!("not cassandra")
        };
        assert_eq!(c.contact_points, vec!["a:9042", "b:9042"]);
        assert_eq!(c.consistency, "LOCAL_QUORUM");
    }
}
