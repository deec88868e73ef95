//! The command line: roles (`all`, `web`, `worker`) and one-shot admin
//! commands (`migrate`, `sites`, `keys`, `replay`).
//!
//! Admin commands print exactly one JSON object on stdout (logs go to
//! stderr for them) so scripts can parse the output.

use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{ArchiveSettings, Role, Settings};
use crate::domain::site::SiteChange;
use crate::domain::{ApiKey, Site};
use crate::metrics::Metrics;
use crate::startup::{self, Application};
use crate::{archive::s3::S3Archive, replay, worker::Attributor};

#[derive(Debug, Parser)]
#[command(name = "tally", version, about = "Self-hosted conversion tracker")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Web and worker in one process on the configured adapters (default).
    All,
    /// HTTP only: /collect, the snippet, the API. Needs a shared queue.
    Web,
    /// Consumers only: attributor and archiver. Needs a shared queue.
    Worker,
    /// Creates or upgrades the store schema (and broker topology).
    Migrate,
    /// Manage sites.
    Sites {
        #[command(subcommand)]
        command: SitesCommand,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Feeds archived hits of UTC days FROM..=TO back through the
    /// attributor (back-fills new goals); prints a JSON summary.
    Replay {
        /// First UTC day, YYYY-MM-DD.
        #[arg(long)]
        from: chrono::NaiveDate,
        /// Last UTC day (inclusive), YYYY-MM-DD.
        #[arg(long)]
        to: chrono::NaiveDate,
        /// Only this site's hits.
        #[arg(long)]
        site: Option<String>,
        /// Only this goal (others are left as they are).
        #[arg(long)]
        goal: Option<uuid::Uuid>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SitesCommand {
    /// Creates a site and its first API key; prints {"site", "api_key"}.
    Create {
        #[arg(long)]
        name: String,
        /// A domain the site's pages live on (repeatable).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// A host whose referrals are never touchpoints (repeatable),
        /// beside the payment providers ignored by default.
        #[arg(long = "ignore-referrer")]
        ignore_referrers: Vec<String>,
        /// The reporting currency (ISO 4217) for hits that name none.
        #[arg(long)]
        currency: Option<String>,
    },
    /// Changes a site's settings; prints the site. A list given replaces
    /// the stored one.
    Update {
        #[arg(long)]
        site: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "domain")]
        domains: Vec<String>,
        #[arg(long = "ignore-referrer")]
        ignore_referrers: Vec<String>,
        /// Empties the ignored referrers (the default ones still apply).
        #[arg(long, conflicts_with = "ignore_referrers")]
        clear_ignore_referrers: bool,
        #[arg(long)]
        currency: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Mints another API key for a site; prints {"site", "api_key"}.
    Create {
        #[arg(long)]
        site: String,
    },
    /// Revokes an API key, given whole or by its first 11 characters.
    Revoke {
        #[arg(long = "key")]
        prefix: String,
    },
}

impl Command {
    fn role(&self) -> Option<Role> {
        match self {
            Command::All => Some(Role::All),
            Command::Web => Some(Role::Web),
            Command::Worker => Some(Role::Worker),
            _ => None,
        }
    }
}

/// Runs a role until SIGTERM / Ctrl-C.
pub async fn serve(settings: Settings, role: Role) -> anyhow::Result<()> {
    let app = Application::build(settings, role)
        .await
        .with_context(|| format!("cannot start `tally {}`", role.as_str()))?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        startup::shutdown_signal().await;
        trigger.cancel();
    });
    app.run_until_stopped(shutdown).await?;
    Ok(())
}

const KEY_PREFIX_LEN: usize = 11;

fn print_json(v: serde_json::Value) {
    println!("{v}");
}

/// Runs one CLI invocation.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::All);
    if let Some(role) = command.role() {
        return serve(settings, role).await;
    }
    let metrics = Arc::new(Metrics::new());
    let store = startup::build_store(&settings, metrics.clone())
        .await
        .context("cannot open the store")?;
    match command {
        Command::Migrate => {
            store.migrate().await.context("migration failed")?;
            if let ArchiveSettings::S3(s3) = &settings.archive {
                S3Archive::new(s3, metrics.clone())
                    .await?
                    .ensure_bucket()
                    .await
                    .with_context(|| format!("cannot create the S3 bucket `{}`", s3.bucket))?;
            }
            if let crate::config::QueueSettings::RabbitMq(r) = &settings.queue {
                let queue = crate::queue::rabbitmq::RabbitMqQueue::connect(r, metrics.clone())
                    .await
                    .context("cannot reach RabbitMQ")?;
                queue
                    .declare_topology()
                    .await
                    .context("cannot declare the RabbitMQ topology")?;
            }
            print_json(serde_json::json!({"migrated": store.name()}));
        }
        Command::Sites {
            command:
                SitesCommand::Create {
                    name,
                    domains,
                    ignore_referrers,
                    currency,
                },
        } => {
            // Checked before anything is written, so a refused name
            // leaves no half-made site behind.
            let site = Site::create(&name, domains, Utc::now())
                .context("invalid site")?
                .changed(SiteChange {
                    currency: currency.map(Some),
                    ignore_referrers: Some(ignore_referrers),
                    ..SiteChange::default()
                })
                .context("invalid site")?;
            store.migrate().await.context("migration failed")?;
            store
                .create_site(&site)
                .await
                .context("cannot create the site")?;
            let key = ApiKey::mint(&site.key);
            store
                .add_api_key(&key)
                .await
                .context("cannot store the API key")?;
            print_json(serde_json::json!({"site": site.key, "api_key": key.secret}));
        }
        Command::Sites {
            command:
                SitesCommand::Update {
                    site,
                    name,
                    domains,
                    ignore_referrers,
                    clear_ignore_referrers,
                    currency,
                },
        } => {
            let old = store
                .site(&site)
                .await
                .context("cannot read the site")?
                .with_context(|| format!("no site `{site}`"))?;
            let change = SiteChange {
                name,
                domains: (!domains.is_empty()).then_some(domains),
                currency: currency.map(Some),
                ignore_referrers: (clear_ignore_referrers || !ignore_referrers.is_empty())
                    .then_some(ignore_referrers),
                ..SiteChange::default()
            };
            let next = old.changed(change).context("invalid site")?;
            if !store
                .update_site(&next)
                .await
                .context("cannot update the site")?
            {
                anyhow::bail!("no site `{site}`");
            }
            print_json(serde_json::to_value(&next).context("cannot print the site")?);
        }
        Command::Keys {
            command: KeysCommand::Create { site },
        } => {
            store
                .site(&site)
                .await?
                .with_context(|| format!("no site `{site}`"))?;
            let key = ApiKey::mint(&site);
            store
                .add_api_key(&key)
                .await
                .context("cannot store the API key")?;
            print_json(serde_json::json!({"site": site, "api_key": key.secret}));
        }
        Command::Keys {
            command: KeysCommand::Revoke { prefix },
        } => {
            // Keys are `tk_` + 40 random characters; the store indexes the
            // first 11 (`tk_` + 8), which is unique in practice.
            anyhow::ensure!(
                prefix.starts_with("tk_") && prefix.len() >= KEY_PREFIX_LEN,
                "give the key, or at least its first {KEY_PREFIX_LEN} characters (tk_ and 8 more)"
            );
            let prefix = &prefix[..KEY_PREFIX_LEN];
            let revoked = store.revoke_api_keys(prefix).await?;
            anyhow::ensure!(revoked > 0, "no API key starts with `{prefix}`");
            print_json(serde_json::json!({"revoked": revoked}));
        }
        Command::Replay {
            from,
            to,
            site,
            goal,
        } => {
            let request = replay::ReplayRequest {
                from,
                to,
                site,
                goal,
            };
            let summary = replay_command(&settings, store, metrics, &request).await?;
            print_json(serde_json::to_value(summary)?);
        }
        Command::All | Command::Web | Command::Worker => unreachable!("roles are served above"),
    }
    Ok(())
}

/// `tally replay`: checks the site and goal exist, then replays with a
/// progress bar when stderr is a terminal.
async fn replay_command(
    settings: &Settings,
    store: Arc<dyn crate::store::Store>,
    metrics: Arc<Metrics>,
    request: &replay::ReplayRequest,
) -> anyhow::Result<replay::ReplaySummary> {
    use std::io::IsTerminal;
    if let Some(site) = &request.site {
        store
            .site(site)
            .await?
            .with_context(|| format!("no site `{site}`"))?;
        if let Some(goal) = request.goal {
            store
                .goal(site, goal)
                .await?
                .with_context(|| format!("site `{site}` has no goal {goal}"))?;
        }
    }
    let archive = startup::build_archive(settings, metrics.clone())
        .await
        .context("cannot open the archive")?;
    let attributor =
        Attributor::new(store, metrics).with_classifier(startup::build_classifier(settings)?);
    let bar = if std::io::stderr().is_terminal() {
        let style = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} objects, {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        indicatif::ProgressBar::new(0).with_style(style)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let summary = replay::replay(archive.as_ref(), &attributor, request, |p| {
        bar.set_length(p.objects_total);
        bar.set_position(p.objects_done);
        bar.set_message(format!("{} hits", p.hits));
    })
    .await
    .context("replay failed")?;
    bar.finish_and_clear();
    Ok(summary)
}
