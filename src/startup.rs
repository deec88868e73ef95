//! Start-up: picks each adapter once from `Settings`, builds the HTTP app
//! and the consumers for a role, and runs them until shutdown.
//!
//! This is the only place that knows which adapters exist; everything
//! else sees `Arc<dyn Queue>`, `Arc<dyn Store>`, `Arc<dyn Archive>`.
//! Shutdown is an input (a `CancellationToken`): stop accepting, answer
//! in-flight requests, flush the queue, let consumers finish their batch,
//! and exit within `shutdown_grace`.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive::{local::LocalArchive, s3::S3Archive, Archive, ArchiveError};
use crate::config::{ArchiveSettings, QueueSettings, Role, Settings, StoreSettings};
use crate::domain::referrer::{Classifier, ReferrerListError};
use crate::http::{self, edge::Edge, session::Sessions, sites::SiteDirectory, AppState};
use crate::live::{local::LocalLive, rabbitmq::RabbitMqLive, recent::RecentHits, Live};
use crate::metrics::Metrics;
use crate::queue::local::{LocalQueue, LocalQueueOptions};
use crate::queue::rabbitmq::RabbitMqQueue;
use crate::queue::{Queue, QueueError};
use crate::store::{cassandra::CassandraStore, sqlite::SqliteStore, Store, StoreError};
use crate::worker::{Archiver, Attributor, ConsumerHealth};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("archive: {0}")]
    Archive(#[from] ArchiveError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("referrer lists: {0}")]
    Referrers(#[from] ReferrerListError),
}

/// The attributor's referrer lists: the embedded ones, or those named by
/// `TALLY_REFERRER_LISTS` / `TALLY_SOURCE_CATEGORIES`, read once (a bad
/// file stops start-up with its path and line rather than classifying
/// with half a list). Loaded lists live as long as the process.
pub fn build_classifier(settings: &Settings) -> Result<&'static Classifier, StartupError> {
    let r = &settings.referrers;
    if r.lists_dir.is_none() && r.source_categories.is_none() {
        return Ok(Classifier::embedded());
    }
    let loaded = Classifier::load(r.lists_dir.as_deref(), r.source_categories.as_deref())?;
    info!(
        lists = ?r.lists_dir,
        source_categories = ?r.source_categories,
        "Referrer lists loaded."
    );
    Ok(Box::leak(Box::new(loaded)))
}

pub async fn build_queue(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Queue>, StartupError> {
    match &settings.queue {
        QueueSettings::Local => Ok(LocalQueue::open_with(
            &settings.data_dir.join("queue"),
            metrics,
            LocalQueueOptions {
                max_backlog_bytes: settings.queue_max_bytes,
                ..LocalQueueOptions::default()
            },
        )?),
        QueueSettings::RabbitMq(r) => Ok(RabbitMqQueue::connect(r, metrics).await?),
    }
}

pub async fn build_store(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Store>, StartupError> {
    match &settings.store {
        StoreSettings::Sqlite => {
            std::fs::create_dir_all(&settings.data_dir)?;
            Ok(Arc::new(SqliteStore::open(
                &settings.data_dir.join("tally.sqlite3"),
                metrics,
            )?))
        }
        StoreSettings::Cassandra(c) => Ok(Arc::new(CassandraStore::connect(c, metrics).await?)),
    }
}

pub async fn build_archive(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Archive>, StartupError> {
    match &settings.archive {
        ArchiveSettings::Local => Ok(Arc::new(
            LocalArchive::open(settings.data_dir.join("archive"))?.counting(metrics),
        )),
        ArchiveSettings::S3(s3) => Ok(Arc::new(S3Archive::new(s3, metrics).await?)),
    }
}

/// Live events: in-process for `all` (one process has both ends); a
/// RabbitMQ fanout for the `web` + `worker` pair, where web processes
/// subscribe and workers only publish.
pub fn build_live(
    settings: &Settings,
    role: Role,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Arc<dyn Live> {
    match (&settings.queue, role) {
        (QueueSettings::RabbitMq(r), Role::Web | Role::Worker) => {
            Arc::new(RabbitMqLive::start(r, role.serves_http(), metrics, stop))
        }
        _ => Arc::new(LocalLive::new()),
    }
}

/// A built, bound, not yet running instance of tally for one role.
pub struct Application {
    settings: Settings,
    role: Role,
    port: u16,
    listener: Option<TcpListener>,
    state: AppState,
}

impl Application {
    /// Builds the adapters and binds the port (if the role serves HTTP;
    /// port 0 picks a free one, see [`Application::port`]).
    pub async fn build(settings: Settings, role: Role) -> Result<Application, StartupError> {
        settings.validate_for(role)?;
        let metrics = Arc::new(Metrics::new());
        let store = build_store(&settings, metrics.clone()).await?;
        let queue = build_queue(&settings, metrics.clone()).await?;
        let archive = if role.consumes() {
            Some(build_archive(&settings, metrics.clone()).await?)
        } else {
            None
        };
        let (listener, port) = if role.serves_http() {
            let listener = TcpListener::bind((settings.host.as_str(), settings.port))?;
            let port = listener.local_addr()?.port();
            (Some(listener), port)
        } else {
            (None, 0)
        };
        let stopping = CancellationToken::new();
        let live = build_live(&settings, role, metrics.clone(), stopping.clone());
        let recent = Arc::new(RecentHits::new());
        if role.serves_http() {
            recent.clone().follow(live.as_ref(), stopping.clone());
        }
        let sessions = Arc::new(Sessions::new(store.clone(), settings.session_max_age));
        let state = AppState {
            sites: Arc::new(SiteDirectory::new(store.clone())),
            edge: Arc::new(Edge::new(settings.edge.clone(), store.clone())),
            queue,
            store,
            archive,
            consumers: Arc::new(ConsumerHealth::new(metrics.clone())),
            metrics,
            live,
            recent,
            sessions,
            stopping,
        };
        Ok(Application {
            settings,
            role,
            port,
            listener,
            state,
        })
    }

    /// The bound HTTP port (0 when the role serves no HTTP).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Runs until `shutdown` is cancelled, then stops in order: HTTP stops
    /// accepting and finishes in-flight requests, the queue flushes, the
    /// consumers finish the batch in hand. Bounded by `shutdown_grace`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let Application {
            settings,
            role,
            port,
            listener,
            state,
        } = self;
        let workers_stop = CancellationToken::new();
        let mut consumers = tokio::task::JoinSet::new();
        // With `CONSUMER_NICE` above 0, `tally all`'s consumers get their
        // own runtime at that priority; otherwise they run on this one.
        let consumer_runtime = match role {
            Role::All if settings.consumer_nice > 0 => {
                Some(consumer_runtime(settings.consumer_nice)?)
            }
            _ => None,
        };
        let consumer_handle = match &consumer_runtime {
            Some(rt) => rt.handle().clone(),
            None => tokio::runtime::Handle::current(),
        };
        if role.consumes() {
            let attributor = Arc::new(
                Attributor::new(state.store.clone(), state.metrics.clone())
                    .with_live(state.live.clone())
                    .with_classifier(build_classifier(&settings)?),
            );
            consumers.spawn_on(
                attributor.run(
                    state.queue.clone(),
                    state.consumers.clone(),
                    workers_stop.clone(),
                ),
                &consumer_handle,
            );
            if let Some(archive) = &state.archive {
                let archiver = Archiver::new(
                    archive.clone(),
                    state.metrics.clone(),
                    settings.archiver.clone(),
                    &settings.data_dir,
                );
                // The intent file is for the one-process local queue; several
                // workers on a broker would share (and race on) one file.
                let archiver = match settings.queue {
                    QueueSettings::Local => archiver,
                    QueueSettings::RabbitMq(_) => archiver.without_intent(),
                };
                let archiver = Arc::new(archiver);
                consumers.spawn_on(
                    archiver.run(
                        state.queue.clone(),
                        state.consumers.clone(),
                        workers_stop.clone(),
                    ),
                    &consumer_handle,
                );
            }
        }
        let server = match listener {
            Some(listener) => {
                let data = web::Data::new(state.clone());
                let mut server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        // Innermost first: stalled bodies become 408s, every
                        // error gets the JSON shape, the request id goes on all.
                        .wrap(actix_web::middleware::from_fn(http::edge::body_stall))
                        .wrap(actix_web::middleware::from_fn(http::edge::json_errors))
                        .wrap(actix_web::middleware::from_fn(crate::telemetry::request_id))
                        .configure(http::routes)
                });
                if let Some(n) = settings.http_workers {
                    server = server.workers(n);
                }
                let server = server
                    .listen(listener)?
                    .disable_signals()
                    .shutdown_timeout(settings.shutdown_grace.as_secs().saturating_sub(5).max(1))
                    .run();
                info!(port, role = role.as_str(), "Listening.");
                Some(server)
            }
            None => {
                info!(role = role.as_str(), "Worker running.");
                None
            }
        };
        let handle = server.as_ref().map(|s| s.handle());
        let server_task = server.map(tokio::spawn);

        shutdown.cancelled().await;
        info!("Shutting down.");
        let deadline = tokio::time::Instant::now() + settings.shutdown_grace;
        // Live streams never end on their own; end them so the server can.
        state.stopping.cancel();
        if let Some(handle) = handle {
            handle.stop(true).await;
        }
        if let Some(task) = server_task {
            let _ = task.await;
        }
        state.queue.close().await;
        workers_stop.cancel();
        loop {
            match tokio::time::timeout_at(deadline, consumers.join_next()).await {
                Ok(None) => break,
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(error))) => warn!(%error, "A consumer task failed."),
                Err(_) => {
                    warn!("Consumers did not stop in time; their unacked hits stay queued.");
                    break;
                }
            }
        }
        // Everything on it has been joined or abandoned above; this does
        // not block, so it is safe inside this runtime.
        if let Some(rt) = consumer_runtime {
            rt.shutdown_background();
        }
        info!("Stopped.");
        Ok(())
    }
}

/// A runtime whose threads (workers and blocking pool alike: SQLite
/// batches, queue reads, archive writes) run at nice `nice`, for the
/// consumers of `tally all` when `CONSUMER_NICE` asks for it. Under load
/// the kernel then runs `/collect` first and counts in the gaps; the
/// durable queue holds the difference (see `Settings::consumer_nice` for
/// what that costs).
fn consumer_runtime(nice: u8) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("tally-consumer")
        .on_thread_start(move || {
            if let Err(error) = lower_this_thread(nice) {
                warn!(%error, nice, "Could not lower a consumer thread's priority.");
            }
        })
        .enable_all()
        .build()
}

/// Sets the calling thread's nice value. On Linux a nice value belongs to
/// a thread, and `setpriority(PRIO_PROCESS, 0, ..)` sets the caller's.
fn lower_this_thread(nice: u8) -> std::io::Result<()> {
    // SAFETY: setpriority only reads its integer arguments and changes
    // the scheduling of this thread; it touches no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, libc::c_int::from(nice)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    warn!(%error, "Cannot listen for SIGTERM; only Ctrl-C stops tally.");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_threads_nice() -> i32 {
        // SAFETY: as in `lower_this_thread`; getpriority only reads.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn consumer_threads_run_at_the_nice_value_and_others_do_not() {
        let ours = this_threads_nice();
        let rt = consumer_runtime(15).unwrap();
        let worker = rt.block_on(async { tokio::spawn(async { this_threads_nice() }).await });
        let blocking = rt.block_on(async { tokio::task::spawn_blocking(this_threads_nice).await });
        assert_eq!(worker.unwrap(), 15);
        assert_eq!(blocking.unwrap(), 15);
        rt.shutdown_background();
        // Only those threads: this one (and the process) keep theirs.
        assert_eq!(this_threads_nice(), ours);
    }
}
