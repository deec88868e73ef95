//! Referrers and channels: which hits are touchpoints, what an untagged
//! referral's source and medium are, and which GA4 channel a touchpoint
//! belongs to.
//!
//! - Search engines and social networks come from Matomo's
//!   searchengine-and-social-list (CC0-1.0), kept in `assets/referrers/` and
//!   embedded at build time; [`Classifier::load`] reads newer copies from a
//!   directory without a rebuild.
//! - Video and shopping sources exist only when the operator supplies a CSV
//!   in the format of Google's source-category list (`source,category`,
//!   with `SOURCE_CATEGORY_VIDEO`, ...). No registry package ships that
//!   list, so without it YouTube and Vimeo (social networks in Matomo's
//!   list) count as Organic or Paid Social, and Paid/Organic Shopping is
//!   reached only through the campaign-name rule.
//! - The channel rules are GA4's default channel group, evaluated in
//!   Google's order, first match wins:
//!   <https://support.google.com/analytics/answer/9756891>.
//!
//! Everything here is bounded: inputs are cut before they are looked at,
//! host patterns are matched label by label (no regex over a host), and the
//! few regexes are Google's, run by the `regex` crate in linear time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, OnceLock};

use regex::Regex;
use yaml_rust2::{Yaml, YamlLoader};

use super::attribution::MAX_DIMENSION_BYTES;
use super::channel::Channel;
use super::hit::{cut_to, Marketing};
use super::site::host_allowed;

/// Longest referrer looked at, in bytes (a hit's text fields are bounded
/// the same way).
pub const MAX_REFERRER_BYTES: usize = 2048;
/// Longest host looked at: DNS names are at most 253 bytes.
const MAX_HOST_BYTES: usize = 253;

/// Hosts whose referrals are never touchpoints, with their subdomains:
/// payment providers a buyer passes through on the way back to the shop.
/// Counting them would hand the sale's credit to the payment page (Umami
/// discussion #2763, <https://github.com/umami-software/umami/discussions/2763>;
/// Matomo issue #18612, <https://github.com/matomo-org/matomo/issues/18612>).
/// A site adds its own in `ignore_referrers`.
pub const DEFAULT_IGNORED_REFERRERS: &[&str] = &[
    "paypal.com",
    "paypal.me",
    "paypalobjects.com",
    "checkout.stripe.com",
    "stripe.com",
    "klarna.com",
    "adyen.com",
    "mollie.com",
    "braintreegateway.com",
    "squareup.com",
    "square.link",
    "pay.amazon.com",
    "payments.amazon.com",
    "pay.google.com",
    "paddle.com",
    "lemonsqueezy.com",
    "gocardless.com",
    "sofort.com",
    "afterpay.com",
    "affirm.com",
    "worldpay.com",
    "authorize.net",
    "2checkout.com",
    "checkout.com",
];

/// Web mail hosts that are not `mail.*` or `webmail.*` subdomains, and the
/// mail apps' Android package ids (`android-app://…` referrers).
const MAIL_HOSTS: &[&str] = &[
    "outlook.live.com",
    "outlook.office.com",
    "outlook.office365.com",
    "outlook.com",
    "inbox.google.com",
    "app.fastmail.com",
    "e.mail.ru",
    "com.google.android.gm",
    "com.microsoft.office.outlook",
    "com.yahoo.mobile.client.android.mail",
    "ch.protonmail.android",
    "com.samsung.android.email.provider",
    "com.fsck.k9",
    "com.readdle.spark",
];

/// Android package ids of search apps, as `android-app://` referrers.
const SEARCH_APPS: &[(&str, &str)] = &[
    ("com.google.android.googlequicksearchbox", "google"),
    ("com.google.android.gms", "google"),
    ("com.microsoft.bing", "bing"),
    ("com.duckduckgo.mobile.android", "duckduckgo"),
];

/// Android package ids of social apps, beside the few in Matomo's list.
const SOCIAL_APPS: &[(&str, &str)] = &[
    ("com.facebook.katana", "facebook"),
    ("com.facebook.lite", "facebook"),
    ("com.facebook.orca", "facebook"),
    ("com.instagram.android", "instagram"),
    ("com.twitter.android", "twitter"),
    ("com.linkedin.android", "linkedin"),
    ("com.reddit.frontpage", "reddit"),
    ("com.pinterest", "pinterest"),
    ("com.zhiliaoapp.musically", "tiktok"),
    ("com.ss.android.ugc.trill", "tiktok"),
    ("com.snapchat.android", "snapchat"),
    ("com.google.android.youtube", "youtube"),
];

/// Social hosts Matomo's list lacks (newer networks, renamed ones).
const SOCIAL_HOSTS: &[(&str, &str)] = &[
    ("x.com", "twitter"),
    ("threads.net", "threads"),
    ("threads.com", "threads"),
    ("bsky.app", "bluesky"),
    ("quora.com", "quora"),
    ("messenger.com", "facebook"),
    ("whatsapp.com", "whatsapp"),
    ("discord.com", "discord"),
    ("nextdoor.com", "nextdoor"),
];

/// Source names GA4 counts as search that people write in `utm_source`,
/// beside the engine names and hosts of Matomo's list.
const SEARCH_ALIASES: &[&str] = &[
    "google",
    "bing",
    "duckduckgo",
    "yahoo",
    "baidu",
    "yandex",
    "ecosia",
    "naver",
    "qwant",
    "startpage",
    "brave",
    "seznam",
    "sogou",
    "daum",
    "msn",
    "aol",
    "ask",
];

/// Source names GA4 counts as social that people write in `utm_source`,
/// beside the network names and hosts of Matomo's list. Matomo lists
/// YouTube as social; Google lists it as video (see the module docs).
const SOCIAL_ALIASES: &[&str] = &[
    "facebook",
    "fb",
    "meta",
    "messenger",
    "ig",
    "instagram",
    "linkedin",
    "twitter",
    "t.co",
    "x",
    "x.com",
    "reddit",
    "pinterest",
    "tiktok",
    "youtube",
    "snapchat",
    "quora",
    "threads",
    "threads.net",
    "bluesky",
    "bsky",
    "bsky.app",
    "mastodon",
    "whatsapp",
    "telegram",
    "discord",
    "tumblr",
    "vk",
    "weibo",
    "wechat",
    "line",
    "nextdoor",
];

/// A source category of Google's list. Search and social also come from
/// Matomo's list; video and shopping only from Google's CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Search,
    Social,
    Video,
    Shopping,
}

/// Why the referrer lists or the source categories could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReferrerListError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file} is not a valid referrer list: {reason}")]
    Invalid { file: String, reason: String },
    #[error("{}, line {line}: {reason}", path.display())]
    SourceCategory {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// A Matomo host with a `{}` placeholder for one or two labels
/// (`{}.search.yahoo.com`, `images.{}.ask.com`). Placeholders at the end
/// (`google.{}`) are not kept here: they stand for a public suffix and are
/// looked up by the rest of the host.
#[derive(Debug, Clone)]
struct HostPattern {
    before: Vec<String>,
    after: Vec<String>,
    name: u32,
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        let n = host.split('.').count();
        let fixed = self.before.len() + self.after.len();
        if n < fixed + 1 || n > fixed + 2 {
            return false;
        }
        let wild = n - fixed;
        host.split('.').enumerate().all(|(i, label)| {
            if i < self.before.len() {
                label == self.before[i]
            } else if i < self.before.len() + wild {
                !label.is_empty()
            } else {
                label == self.after[i - self.before.len() - wild]
            }
        })
    }
}

/// Classifies referrer hosts and touchpoint labels. Built once (from the
/// embedded lists, or from files at start-up) and shared.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// Source names: normalised Matomo engine and network names.
    names: Vec<String>,
    /// Search engines by exact host.
    search_hosts: HashMap<String, u32>,
    /// Search engines by host less its public suffix (`google.{}` is
    /// `google`).
    search_by_stem: HashMap<String, u32>,
    /// Search engines by a host with a placeholder elsewhere.
    search_patterns: Vec<HostPattern>,
    /// Social networks by host (or app id); subdomains match too.
    social_hosts: HashMap<String, u32>,
    /// Category of a source name (engine and network names, aliases).
    named: HashMap<String, Category>,
    /// Google's source categories from the operator's CSV; they win.
    source_categories: HashMap<String, Category>,
}

const EMBEDDED_SEARCH: &str = include_str!("../../assets/referrers/SearchEngines.yml");
const EMBEDDED_SOCIAL: &str = include_str!("../../assets/referrers/Socials.yml");

/// Google's regexes, compiled once. Case-insensitive, as GA4's conditions
/// are; the `regex` crate never backtracks.
struct Rules {
    paid_medium: Regex,
    shopping_campaign: Regex,
    video_medium: Regex,
    cross_network: Regex,
    email: Regex,
}

static RULES: LazyLock<Rules> = LazyLock::new(|| Rules {
    paid_medium: Regex::new(r"(?i)^(.*cp.*|ppc|retargeting|paid.*)$").expect("valid regex"),
    shopping_campaign: Regex::new(r"(?i)^(.*(([^a-df-z]|^)shop|shopping).*)$")
        .expect("valid regex"),
    video_medium: Regex::new(r"(?i)^(.*video.*)$").expect("valid regex"),
    cross_network: Regex::new(r"(?i)cross-network").expect("valid regex"),
    email: Regex::new(r"(?i)^(email|e-mail|e_mail|e mail)$").expect("valid regex"),
});

impl Classifier {
    /// The classifier over the lists built into the binary.
    pub fn embedded() -> &'static Classifier {
        static EMBEDDED: OnceLock<Classifier> = OnceLock::new();
        EMBEDDED.get_or_init(|| {
            Classifier::from_lists(EMBEDDED_SEARCH, EMBEDDED_SOCIAL)
                .expect("the embedded referrer lists parse (tested)")
        })
    }

    /// A classifier over `SearchEngines.yml` and `Socials.yml` in
    /// `lists_dir` (the embedded copies when `None`), and Google's source
    /// categories from a CSV when given.
    pub fn load(
        lists_dir: Option<&Path>,
        source_categories: Option<&Path>,
    ) -> Result<Classifier, ReferrerListError> {
        let mut classifier = match lists_dir {
            None => Classifier::embedded().clone(),
            Some(dir) => {
                let search = read(&dir.join("SearchEngines.yml"))?;
                let social = read(&dir.join("Socials.yml"))?;
                Classifier::from_lists(&search, &social)?
            }
        };
        if let Some(path) = source_categories {
            classifier.source_categories = parse_source_categories(path, &read(path)?)?;
        }
        Ok(classifier)
    }

    fn from_lists(search: &str, social: &str) -> Result<Classifier, ReferrerListError> {
        let mut c = Classifier {
            names: Vec::new(),
            search_hosts: HashMap::new(),
            search_by_stem: HashMap::new(),
            search_patterns: Vec::new(),
            social_hosts: HashMap::new(),
            named: HashMap::new(),
            source_categories: HashMap::new(),
        };
        for (name, defs) in yaml_map("SearchEngines.yml", search)? {
            let idx = c.push_name(&name);
            let defs = defs
                .as_vec()
                .ok_or_else(|| invalid_list("SearchEngines.yml", &name))?;
            for def in defs {
                let urls = def["urls"]
                    .as_vec()
                    .ok_or_else(|| invalid_list("SearchEngines.yml", &name))?;
                for url in urls.iter().filter_map(scalar) {
                    c.add_search_host(&url.to_ascii_lowercase(), idx);
                }
            }
        }
        let mut social_names = std::collections::HashSet::new();
        for (name, hosts) in yaml_map("Socials.yml", social)? {
            let idx = c.push_name(&name);
            social_names.insert(idx);
            let hosts = hosts
                .as_vec()
                .ok_or_else(|| invalid_list("Socials.yml", &name))?;
            for host in hosts.iter().filter_map(scalar) {
                c.social_hosts
                    .entry(host.trim().to_ascii_lowercase())
                    .or_insert(idx);
            }
        }
        // Search names first, social second: Matomo lists Facebook and
        // Myspace as search engines too (for their own search pages), but a
        // source named `facebook` is a social network.
        for (i, name) in c.names.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let social = social_names.contains(&(i as u32));
            let category = if social {
                Category::Social
            } else {
                Category::Search
            };
            let entry = c.named.entry(name.clone()).or_insert(category);
            if social {
                *entry = Category::Social;
            }
        }
        for alias in SEARCH_ALIASES {
            c.named
                .entry((*alias).to_owned())
                .or_insert(Category::Search);
        }
        for alias in SOCIAL_ALIASES {
            c.named.insert((*alias).to_owned(), Category::Social);
        }
        for (app, network) in SOCIAL_APPS.iter().chain(SOCIAL_HOSTS) {
            let idx = c.push_name(network);
            c.social_hosts.entry((*app).to_owned()).or_insert(idx);
        }
        if c.search_hosts.is_empty() || c.social_hosts.is_empty() {
            return Err(ReferrerListError::Invalid {
                file: "SearchEngines.yml / Socials.yml".to_owned(),
                reason: "no hosts found".to_owned(),
            });
        }
        Ok(c)
    }

    fn push_name(&mut self, name: &str) -> u32 {
        let normal = source_name(name);
        if let Some(i) = self.names.iter().position(|n| *n == normal) {
            return i as u32;
        }
        self.names.push(normal);
        (self.names.len() - 1) as u32
    }

    fn add_search_host(&mut self, host: &str, idx: u32) {
        let host = host.trim();
        // Entries with a path (`google.{}/products`) need the URL's path,
        // and their hosts are listed without one as well.
        if host.is_empty() || host.contains('/') {
            return;
        }
        match host.matches("{}").count() {
            0 => {
                self.search_hosts.entry(host.to_owned()).or_insert(idx);
            }
            1 if host.ends_with(".{}") => {
                let stem = &host[..host.len() - 3];
                self.search_by_stem.entry(stem.to_owned()).or_insert(idx);
            }
            1 => {
                let labels: Vec<&str> = host.split('.').collect();
                let at = labels.iter().position(|l| *l == "{}");
                if let Some(at) = at {
                    self.search_patterns.push(HostPattern {
                        before: labels[..at].iter().map(|s| (*s).to_owned()).collect(),
                        after: labels[at + 1..].iter().map(|s| (*s).to_owned()).collect(),
                        name: idx,
                    });
                }
            }
            _ => {}
        }
    }

    /// The search engine of a (lowercase) host, by exact host, then
    /// `name.{}` stems, then other placeholders, each with and without a
    /// leading `www.`.
    fn search_engine(&self, host: &str) -> Option<u32> {
        let bare = host.strip_prefix("www.");
        for h in std::iter::once(host).chain(bare) {
            if let Some(&i) = self.search_hosts.get(h) {
                return Some(i);
            }
            if let Some(sfx) = psl::suffix(h.as_bytes()).filter(|s| s.is_known()) {
                let sfx_len = sfx.as_bytes().len();
                if h.len() > sfx_len + 1 {
                    if let Some(&i) = self.search_by_stem.get(&h[..h.len() - sfx_len - 1]) {
                        return Some(i);
                    }
                }
            }
            if let Some(p) = self.search_patterns.iter().find(|p| p.matches(h)) {
                return Some(p.name);
            }
        }
        None
    }

    /// The social network of a (lowercase) host or any of its parents.
    fn social_network(&self, host: &str) -> Option<u32> {
        let mut h = host;
        loop {
            if let Some(&i) = self.social_hosts.get(h) {
                return Some(i);
            }
            h = h.split_once('.')?.1;
        }
    }

    /// The source category of a lowercase source: Google's CSV first, then
    /// names and aliases, then, for a source that looks like a host, the
    /// host lists.
    fn category(&self, source: &str) -> Option<Category> {
        let bare = source.strip_prefix("www.").unwrap_or(source);
        if let Some(&c) = self.source_categories.get(bare) {
            return Some(c);
        }
        if let Some(&c) = self.named.get(source) {
            return Some(c);
        }
        if !source.contains('.') || source.contains([' ', '/', ':']) {
            return None;
        }
        if self.social_network(source).is_some() {
            Some(Category::Social)
        } else if self.search_engine(source).is_some() {
            Some(Category::Search)
        } else {
            None
        }
    }

    /// GA4's default channel group of a touchpoint with these labels: its
    /// ordered rules over (source, medium, campaign), case-insensitive,
    /// first match wins. Labels are cut to
    /// [`MAX_DIMENSION_BYTES`]
    /// first, as a touchpoint keeps them.
    pub fn channel(&self, source: &str, medium: Option<&str>, campaign: Option<&str>) -> Channel {
        let source = cut_str(source.trim(), MAX_DIMENSION_BYTES);
        let medium = cut_str(medium.unwrap_or("").trim(), MAX_DIMENSION_BYTES);
        let campaign = cut_str(campaign.unwrap_or("").trim(), MAX_DIMENSION_BYTES);
        let is = |s: &str, any: &[&str]| any.iter().any(|a| s.eq_ignore_ascii_case(a));

        if source.eq_ignore_ascii_case("(direct)") && is(medium, &["", "(none)", "(not set)"]) {
            return Channel::Direct;
        }
        let category = self.category(&source.to_ascii_lowercase());
        let paid = RULES.paid_medium.is_match(medium);
        let shopping =
            category == Some(Category::Shopping) || RULES.shopping_campaign.is_match(campaign);

        if RULES.cross_network.is_match(campaign) {
            Channel::CrossNetwork
        } else if shopping && paid {
            Channel::PaidShopping
        } else if category == Some(Category::Search) && paid {
            Channel::PaidSearch
        } else if category == Some(Category::Social) && paid {
            Channel::PaidSocial
        } else if category == Some(Category::Video) && paid {
            Channel::PaidVideo
        } else if is(
            medium,
            &["display", "banner", "expandable", "interstitial", "cpm"],
        ) {
            Channel::Display
        } else if paid {
            Channel::PaidOther
        } else if shopping {
            Channel::OrganicShopping
        } else if category == Some(Category::Social)
            || is(
                medium,
                &[
                    "social",
                    "social-network",
                    "social-media",
                    "sm",
                    "social network",
                    "social media",
                ],
            )
        {
            Channel::OrganicSocial
        } else if category == Some(Category::Video) || RULES.video_medium.is_match(medium) {
            Channel::OrganicVideo
        } else if category == Some(Category::Search) || is(medium, &["organic"]) {
            Channel::OrganicSearch
        } else if RULES.email.is_match(source) || RULES.email.is_match(medium) {
            Channel::Email
        } else if is(medium, &["affiliate"]) {
            Channel::Affiliates
        } else if is(medium, &["referral", "app", "link"]) {
            Channel::Referral
        } else if is(medium, &["audio"]) {
            Channel::Audio
        } else if is(source, &["sms"]) || is(medium, &["sms"]) {
            Channel::Sms
        } else if ends_with_ignore_case(medium, "push")
            || contains_ignore_case(medium, "mobile")
            || contains_ignore_case(medium, "notification")
            || is(source, &["firebase"])
        {
            Channel::MobilePush
        } else {
            Channel::Unassigned
        }
    }

    /// Source and medium (`organic`, `social`, `email` or `referral`) of an
    /// untagged referral from this host: a search engine's or social
    /// network's name from the lists, the host itself for web mail, else
    /// the host's registrable domain (the whole host when that domain is
    /// itself a search or social host, so `docs.google.com` stays apart
    /// from Google search).
    pub fn referral(&self, host: &str) -> (String, &'static str) {
        let host = normal_host(host);
        if host.is_empty() {
            return ("(not set)".to_owned(), "referral");
        }
        if is_mail_host(&host) {
            return (bounded(host), "email");
        }
        if let Some(i) = self.social_network(&host) {
            if let Some(name) = self.name(i) {
                return (name, "social");
            }
        }
        if let Some(i) = self.search_engine(&host) {
            if let Some(name) = self.name(i) {
                return (name, "organic");
            }
        }
        if host.parse::<IpAddr>().is_ok() || !host.contains('.') {
            return (bounded(host), "referral");
        }
        let domain = psl::domain_str(&host).unwrap_or(&host);
        let source = if domain != host && self.category(domain).is_some() {
            host.clone()
        } else {
            domain.to_owned()
        };
        (bounded(source), "referral")
    }

    /// Source and medium of an `android-app://<package>/` referrer: the
    /// package id, with the medium of the app it names where known.
    fn app_referral(&self, package: &str) -> (String, &'static str) {
        let package = normal_host(package);
        let medium = if is_mail_host(&package) {
            "email"
        } else if SEARCH_APPS.iter().any(|(p, _)| *p == package) {
            "organic"
        } else if self.social_hosts.contains_key(package.as_str()) {
            "social"
        } else if self.search_hosts.contains_key(package.as_str()) {
            "organic"
        } else {
            "referral"
        };
        (bounded(package), medium)
    }

    fn name(&self, i: u32) -> Option<String> {
        self.names
            .get(i as usize)
            .filter(|n| !n.is_empty())
            .cloned()
    }
}

/// What the site says about its own hosts and the referrers to ignore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferralRules {
    /// The site's allowed domains (`domain::site::host_allowed`); empty
    /// means only the page's own host is the site.
    pub domains: Vec<String>,
    /// Hosts (with their subdomains) whose referrals are not touchpoints,
    /// beside [`DEFAULT_IGNORED_REFERRERS`].
    pub ignore_referrers: Vec<String>,
}

/// The labels a touchpoint carries, decided once when it is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub source: String,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub ad: Option<String>,
    pub channel: Channel,
}

/// The labels of a hit that is a touchpoint, `None` when it is not one.
///
/// A click id or any utm tag makes a touchpoint labelled from them
/// (`utm_source`, else the click id's network; `utm_medium`, else the
/// click id's default medium). Otherwise a referrer on a host outside the
/// site and outside the ignored referrers makes one, labelled by
/// [`Classifier::referral`]; an `android-app://` referrer is labelled by
/// its package id. Direct visits, self-referrals, ignored referrers and
/// referrers that are not http(s) or Android app URLs make none.
pub fn touchpoint_labels(
    m: &Marketing,
    referrer: Option<&str>,
    page_url: Option<&str>,
    rules: &ReferralRules,
    c: &Classifier,
) -> Option<Labels> {
    if m.is_touchpoint() {
        let source = bounded(m.source().unwrap_or_else(|| "(not set)".to_owned()));
        let medium = m.medium().map(bounded);
        let campaign = m.utm_campaign.clone().map(bounded);
        let ad = m.ad().map(bounded);
        let channel = c.channel(&source, medium.as_deref(), campaign.as_deref());
        return Some(Labels {
            source,
            medium,
            campaign,
            ad,
            channel,
        });
    }
    let referrer = cut_str(referrer?.trim(), MAX_REFERRER_BYTES);
    let parsed = url::Url::parse(referrer).ok()?;
    let host = parsed.host_str()?;
    let (source, medium) = match parsed.scheme() {
        "http" | "https" => {
            let host = normal_host(host);
            if is_own_host(&host, page_url, rules) || is_ignored(&host, rules) {
                return None;
            }
            c.referral(&host)
        }
        "android-app" => {
            if is_ignored(host, rules) {
                return None;
            }
            c.app_referral(host)
        }
        _ => return None,
    };
    let channel = c.channel(&source, Some(medium), None);
    Some(Labels {
        source,
        medium: Some(medium.to_owned()),
        campaign: None,
        ad: None,
        channel,
    })
}

/// A self-referral: the page's own host (a leading `www.` aside), or any
/// host of the site's domains when it lists some.
fn is_own_host(host: &str, page_url: Option<&str>, rules: &ReferralRules) -> bool {
    if !rules.domains.is_empty() && host_allowed(&rules.domains, host) {
        return true;
    }
    let Some(page) = page_url.and_then(|u| url::Url::parse(cut_str(u, MAX_REFERRER_BYTES)).ok())
    else {
        return false;
    };
    let Some(page_host) = page.host_str() else {
        return false;
    };
    let page_host = normal_host(page_host);
    let strip = |h: &str| h.strip_prefix("www.").unwrap_or(h).to_owned();
    strip(host) == strip(&page_host)
}

fn is_ignored(host: &str, rules: &ReferralRules) -> bool {
    DEFAULT_IGNORED_REFERRERS
        .iter()
        .copied()
        .chain(rules.ignore_referrers.iter().map(String::as_str))
        .any(|d| {
            let d = d.trim().trim_end_matches('.');
            !d.is_empty() && host_within(host, d)
        })
}

/// `host` is `domain` or one of its subdomains (ASCII case ignored).
fn host_within(host: &str, domain: &str) -> bool {
    let Some(at) = host.len().checked_sub(domain.len()) else {
        return false;
    };
    if !host.is_char_boundary(at) {
        return false;
    }
    let (rest, tail) = host.split_at(at);
    tail.eq_ignore_ascii_case(domain) && (rest.is_empty() || rest.ends_with('.'))
}

fn is_mail_host(host: &str) -> bool {
    if MAIL_HOSTS.contains(&host) {
        return true;
    }
    let Some((first, rest)) = host.split_once('.') else {
        return false;
    };
    // `mail.google.com`, `webmail.example.net`; not `mail.ru` itself.
    (first == "mail" || first == "webmail")
        && rest.contains('.')
        && psl::domain_str(host).is_some_and(|d| d != host)
}

/// Lowercase, without a trailing dot, brackets or port, cut to the length
/// of a DNS name.
fn normal_host(host: &str) -> String {
    let host = cut_str(host.trim(), MAX_HOST_BYTES + 8);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let host = host.trim_end_matches('.');
    cut_str(host, MAX_HOST_BYTES).to_ascii_lowercase()
}

/// A Matomo engine or network name as a source: lowercase, `%2B` read as
/// `plus`, only `[a-z0-9.-]` kept (`Yahoo!` is `yahoo`, `Google%2B` is
/// `googleplus`).
fn source_name(name: &str) -> String {
    name.replace("%2B", "plus")
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect()
}

fn bounded(s: String) -> String {
    cut_to(s, MAX_DIMENSION_BYTES)
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.is_char_boundary(s.len() - suffix.len())
        && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

fn contains_ignore_case(s: &str, needle: &str) -> bool {
    s.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn read(path: &Path) -> Result<String, ReferrerListError> {
    std::fs::read_to_string(path).map_err(|source| ReferrerListError::Read {
        path: path.to_owned(),
        source,
    })
}

fn invalid_list(file: &str, entry: &str) -> ReferrerListError {
    ReferrerListError::Invalid {
        file: file.to_owned(),
        reason: format!("entry `{entry}` has an unexpected shape"),
    }
}

/// The top-level mapping of a Matomo list, as (name, value) pairs.
fn yaml_map(file: &str, text: &str) -> Result<Vec<(String, Yaml)>, ReferrerListError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| ReferrerListError::Invalid {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    let Some(map) = docs.into_iter().next().and_then(|d| d.into_hash()) else {
        return Err(ReferrerListError::Invalid {
            file: file.to_owned(),
            reason: "not a mapping of names to hosts".to_owned(),
        });
    };
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| scalar(&k).map(|k| (k, v)))
        .collect())
}

/// A YAML scalar as text (`118700` and `1.5` are numbers to YAML).
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Google's source categories: `source,category` lines, `category` one of
/// `SOURCE_CATEGORY_SEARCH`, `_SOCIAL`, `_VIDEO`, `_SHOPPING` (or the bare
/// word). A header line and blank lines are skipped; quotes are allowed.
fn parse_source_categories(
    path: &Path,
    text: &str,
) -> Result<HashMap<String, Category>, ReferrerListError> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: &str| ReferrerListError::SourceCategory {
            path: path.to_owned(),
            line: n + 1,
            reason: reason.to_owned(),
        };
        let (source, category) = line
            .split_once([',', '\t', ';'])
            .ok_or_else(|| err("expected `source,category`"))?;
        let unquote = |s: &str| s.trim().trim_matches('"').trim().to_ascii_lowercase();
        let (source, category) = (unquote(source), unquote(category));
        let category = match category.trim_start_matches("source_category_") {
            "search" => Category::Search,
            "social" => Category::Social,
            "video" => Category::Video,
            "shopping" => Category::Shopping,
            _ if n == 0 => continue, // a header
            _ => return Err(err("category must be SEARCH, SOCIAL, VIDEO or SHOPPING")),
        };
        let source = source.strip_prefix("www.").unwrap_or(&source);
        if source.is_empty() {
            return Err(err("empty source"));
        }
        out.insert(source.to_owned(), category);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
