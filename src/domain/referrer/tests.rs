//! The referrer and channel rules, row by row. Each expectation is written
//! from GA4's published rules and the lists' contents, not from output.

use super::*;
use proptest::prelude::*;
use Channel::*;

const PAGE: &str = "https://shop.example/p";

/// (page URL with its query, referrer, expected source, medium, channel;
/// `None` when the hit is no touchpoint).
type Row = (
    &'static str,
    Option<&'static str>,
    Option<(&'static str, Option<&'static str>, Channel)>,
);

fn page(query: &'static str) -> String {
    format!("{PAGE}?{query}")
}

fn labels_of(page_url: &str, referrer: Option<&str>, rules: &ReferralRules) -> Option<Labels> {
    let m = Marketing::from_url(page_url);
    touchpoint_labels(&m, referrer, Some(page_url), rules, Classifier::embedded())
}

fn check(rows: &[Row], rules: &ReferralRules) {
    let mut failures = Vec::new();
    for (query, referrer, want) in rows {
        let url = if query.is_empty() {
            PAGE.to_owned()
        } else {
            page(query)
        };
        let got = labels_of(&url, *referrer, rules).map(|l| (l.source, l.medium, l.channel));
        let want = want.map(|(s, m, c)| (s.to_owned(), m.map(str::to_owned), c));
        if got != want {
            failures.push(format!(
                "{query:?} from {referrer:?}: got {got:?}, want {want:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[rustfmt::skip]
const REFERRALS: &[Row] = &[
    // Search engines: organic, source is the engine's name.
    ("", Some("https://www.google.com/"), Some(("google", Some("organic"), OrganicSearch))),
    ("", Some("https://www.google.co.uk/"), Some(("google", Some("organic"), OrganicSearch))),
    ("", Some("https://www.google.de/search?q=shoes"), Some(("google", Some("organic"), OrganicSearch))),
    ("", Some("https://www.google.com.br/"), Some(("google", Some("organic"), OrganicSearch))),
    ("", Some("https://google.fr/"), Some(("google", Some("organic"), OrganicSearch))),
    ("", Some("https://www.bing.com/search?q=shoes"), Some(("bing", Some("organic"), OrganicSearch))),
    ("", Some("https://cn.bing.com/"), Some(("bing", Some("organic"), OrganicSearch))),
    ("", Some("https://duckduckgo.com/"), Some(("duckduckgo", Some("organic"), OrganicSearch))),
    ("", Some("https://search.yahoo.com/search?p=shoes"), Some(("yahoo", Some("organic"), OrganicSearch))),
    ("", Some("https://uk.search.yahoo.com/"), Some(("yahoo", Some("organic"), OrganicSearch))),
    ("", Some("https://www.baidu.com/link?url=abc"), Some(("baidu", Some("organic"), OrganicSearch))),
    ("", Some("https://m.baidu.com/"), Some(("baidu", Some("organic"), OrganicSearch))),
    ("", Some("https://yandex.ru/"), Some(("yandex", Some("organic"), OrganicSearch))),
    ("", Some("https://yandex.com.tr/"), Some(("yandex", Some("organic"), OrganicSearch))),
    ("", Some("https://www.ecosia.org/search?q=x"), Some(("ecosia", Some("organic"), OrganicSearch))),
    ("", Some("https://search.brave.com/"), Some(("brave", Some("organic"), OrganicSearch))),
    ("", Some("https://www.qwant.com/"), Some(("qwant", Some("organic"), OrganicSearch))),
    ("", Some("https://www.startpage.com/"), Some(("startpage", Some("organic"), OrganicSearch))),
    ("", Some("https://search.naver.com/"), Some(("naver", Some("organic"), OrganicSearch))),
    ("", Some("https://search.seznam.cz/"), Some(("seznam", Some("organic"), OrganicSearch))),
    ("", Some("https://www.sogou.com/"), Some(("sogou", Some("organic"), OrganicSearch))),
    ("", Some("https://search.yahoo.co.jp/"), Some(("yahoojapan", Some("organic"), OrganicSearch))),
    ("", Some("https://www.so.com/"), Some(("360search", Some("organic"), OrganicSearch))),
    ("", Some("https://news.google.com/"), Some(("googlenews", Some("organic"), OrganicSearch))),
    // Social networks: social, source is the network's name.
    ("", Some("https://facebook.com/"), Some(("facebook", Some("social"), OrganicSocial))),
    ("", Some("https://www.facebook.com/"), Some(("facebook", Some("social"), OrganicSocial))),
    ("", Some("https://l.facebook.com/l.php?u=https%3A%2F%2Fshop.example%2F"), Some(("facebook", Some("social"), OrganicSocial))),
    ("", Some("https://m.facebook.com/"), Some(("facebook", Some("social"), OrganicSocial))),
    ("", Some("https://lm.facebook.com/"), Some(("facebook", Some("social"), OrganicSocial))),
    ("", Some("https://www.instagram.com/"), Some(("instagram", Some("social"), OrganicSocial))),
    ("", Some("https://l.instagram.com/"), Some(("instagram", Some("social"), OrganicSocial))),
    ("", Some("https://t.co/abc123"), Some(("twitter", Some("social"), OrganicSocial))),
    ("", Some("https://twitter.com/someone"), Some(("twitter", Some("social"), OrganicSocial))),
    ("", Some("https://x.com/someone"), Some(("twitter", Some("social"), OrganicSocial))),
    ("", Some("https://www.linkedin.com/feed/"), Some(("linkedin", Some("social"), OrganicSocial))),
    ("", Some("https://lnkd.in/xyz"), Some(("linkedin", Some("social"), OrganicSocial))),
    ("", Some("https://www.reddit.com/r/rust/"), Some(("reddit", Some("social"), OrganicSocial))),
    ("", Some("https://old.reddit.com/"), Some(("reddit", Some("social"), OrganicSocial))),
    ("", Some("https://www.pinterest.com/pin/1/"), Some(("pinterest", Some("social"), OrganicSocial))),
    ("", Some("https://www.pinterest.co.uk/"), Some(("pinterest", Some("social"), OrganicSocial))),
    ("", Some("https://www.youtube.com/watch?v=x"), Some(("youtube", Some("social"), OrganicSocial))),
    ("", Some("https://m.youtube.com/"), Some(("youtube", Some("social"), OrganicSocial))),
    ("", Some("https://www.tiktok.com/@shop"), Some(("tiktok", Some("social"), OrganicSocial))),
    ("", Some("https://news.ycombinator.com/item?id=1"), Some(("hackernews", Some("social"), OrganicSocial))),
    ("", Some("https://vk.com/"), Some(("vkontakte", Some("social"), OrganicSocial))),
    ("", Some("https://stackoverflow.com/questions/1"), Some(("stackoverflow", Some("social"), OrganicSocial))),
    ("", Some("https://github.com/o/r"), Some(("github", Some("social"), OrganicSocial))),
    ("", Some("https://mastodon.social/@a"), Some(("mastodon", Some("social"), OrganicSocial))),
    ("", Some("https://www.quora.com/q"), Some(("quora", Some("social"), OrganicSocial))),
    // Web mail: email, source is the mail host.
    ("", Some("https://mail.google.com/mail/u/0/"), Some(("mail.google.com", Some("email"), Email))),
    ("", Some("https://outlook.live.com/mail/0/"), Some(("outlook.live.com", Some("email"), Email))),
    ("", Some("https://outlook.office.com/"), Some(("outlook.office.com", Some("email"), Email))),
    ("", Some("https://mail.yahoo.com/"), Some(("mail.yahoo.com", Some("email"), Email))),
    ("", Some("https://webmail.provider.example/"), Some(("webmail.provider.example", Some("email"), Email))),
    // Android apps: the package id, classified where the lists know it.
    ("", Some("android-app://com.google.android.gm/"), Some(("com.google.android.gm", Some("email"), Email))),
    ("", Some("android-app://com.google.android.googlequicksearchbox/"), Some(("com.google.android.googlequicksearchbox", Some("organic"), OrganicSearch))),
    ("", Some("android-app://com.facebook.katana/"), Some(("com.facebook.katana", Some("social"), OrganicSocial))),
    ("", Some("android-app://org.telegram.messenger/"), Some(("org.telegram.messenger", Some("social"), OrganicSocial))),
    ("", Some("android-app://com.example.reader/"), Some(("com.example.reader", Some("referral"), Referral))),
    // Anything else: the registrable domain, referral.
    ("", Some("https://www.nytimes.com/2024/01/01/a.html"), Some(("nytimes.com", Some("referral"), Referral))),
    ("", Some("https://www.bbc.co.uk/news/1"), Some(("bbc.co.uk", Some("referral"), Referral))),
    ("", Some("https://edition.cnn.com/"), Some(("cnn.com", Some("referral"), Referral))),
    ("", Some("https://www.theguardian.com/uk"), Some(("theguardian.com", Some("referral"), Referral))),
    ("", Some("https://www.spiegel.de/"), Some(("spiegel.de", Some("referral"), Referral))),
    ("", Some("https://en.wikipedia.org/wiki/Shoe"), Some(("wikipedia.org", Some("referral"), Referral))),
    ("", Some("https://someone.blogspot.com/2024/01/post.html"), Some(("someone.blogspot.com", Some("referral"), Referral))),
    ("", Some("https://someone.github.io/post"), Some(("someone.github.io", Some("referral"), Referral))),
    ("", Some("https://medium.com/@someone/post-1"), Some(("medium.com", Some("referral"), Referral))),
    ("", Some("https://dev.to/someone/post"), Some(("dev.to", Some("referral"), Referral))),
    ("", Some("https://blog.rust-lang.org/"), Some(("rust-lang.org", Some("referral"), Referral))),
    ("", Some("https://WWW.Example-Blog.COM/Post"), Some(("example-blog.com", Some("referral"), Referral))),
    ("", Some("http://192.168.1.10:8080/admin"), Some(("192.168.1.10", Some("referral"), Referral))),
    ("", Some("http://localhost:3000/"), Some(("localhost", Some("referral"), Referral))),
    // A search or social domain's other hosts stay apart from it.
    ("", Some("https://docs.google.com/document/d/1"), Some(("docs.google.com", Some("referral"), Referral))),
    // Self-referrals, payment providers and non-web referrers: none.
    ("", Some("https://shop.example/cart"), None),
    ("", Some("https://www.shop.example/"), None),
    ("", Some("https://SHOP.example/x"), None),
    ("", Some("https://www.paypal.com/checkoutnow?token=1"), None),
    ("", Some("https://paypal.me/someone"), None),
    ("", Some("https://checkout.stripe.com/c/pay/cs_1"), None),
    ("", Some("https://pay.klarna.com/eu/1"), None),
    ("", Some("https://checkoutshopper-live.adyen.com/"), None),
    ("", Some("https://www.mollie.com/checkout/1"), None),
    ("", None, None),
    ("", Some(""), None),
    ("", Some("not a url"), None),
    ("", Some("ftp://files.example/"), None),
    ("", Some("javascript:alert(1)"), None),
    ("", Some("data:text/html,hi"), None),
    ("", Some("file:///etc/passwd"), None),
    ("", Some("https://"), None),
];

#[rustfmt::skip]
const TAGGED: &[Row] = &[
    // utm tags: labels as tagged, channel by GA4's ordered rules.
    ("utm_source=google&utm_medium=cpc", None, Some(("google", Some("cpc"), PaidSearch))),
    ("utm_source=Google&utm_medium=CPC", None, Some(("Google", Some("CPC"), PaidSearch))),
    ("utm_source=bing&utm_medium=ppc", None, Some(("bing", Some("ppc"), PaidSearch))),
    ("utm_source=google&utm_medium=paid-search", None, Some(("google", Some("paid-search"), PaidSearch))),
    ("utm_source=duckduckgo&utm_medium=cpc", None, Some(("duckduckgo", Some("cpc"), PaidSearch))),
    ("utm_source=duckduckgo.com&utm_medium=cpc", None, Some(("duckduckgo.com", Some("cpc"), PaidSearch))),
    ("utm_source=www.bing.com&utm_medium=cpc", None, Some(("www.bing.com", Some("cpc"), PaidSearch))),
    ("utm_source=google&utm_medium=cpm", None, Some(("google", Some("cpm"), PaidSearch))),
    ("utm_source=facebook&utm_medium=paid_social", None, Some(("facebook", Some("paid_social"), PaidSocial))),
    ("utm_source=fb&utm_medium=cpc", None, Some(("fb", Some("cpc"), PaidSocial))),
    ("utm_source=ig&utm_medium=cpc", None, Some(("ig", Some("cpc"), PaidSocial))),
    ("utm_source=m.facebook.com&utm_medium=cpc", None, Some(("m.facebook.com", Some("cpc"), PaidSocial))),
    ("utm_source=linkedin&utm_medium=paid", None, Some(("linkedin", Some("paid"), PaidSocial))),
    ("utm_source=x&utm_medium=cpc", None, Some(("x", Some("cpc"), PaidSocial))),
    ("utm_source=t.co&utm_medium=cpc", None, Some(("t.co", Some("cpc"), PaidSocial))),
    ("utm_source=tiktok&utm_medium=paid", None, Some(("tiktok", Some("paid"), PaidSocial))),
    ("utm_source=youtube&utm_medium=cpc", None, Some(("youtube", Some("cpc"), PaidSocial))),
    ("utm_source=vimeo&utm_medium=cpc", None, Some(("vimeo", Some("cpc"), PaidSocial))),
    ("utm_source=facebook&utm_medium=social", None, Some(("facebook", Some("social"), OrganicSocial))),
    ("utm_source=reddit&utm_medium=social-network", None, Some(("reddit", Some("social-network"), OrganicSocial))),
    ("utm_source=forum&utm_medium=sm", None, Some(("forum", Some("sm"), OrganicSocial))),
    ("utm_source=forum&utm_medium=social%20media", None, Some(("forum", Some("social media"), OrganicSocial))),
    ("utm_source=lnkd.in&utm_medium=social", None, Some(("lnkd.in", Some("social"), OrganicSocial))),
    ("utm_source=youtube&utm_medium=video", None, Some(("youtube", Some("video"), OrganicSocial))),
    ("utm_source=vendor&utm_medium=video", None, Some(("vendor", Some("video"), OrganicVideo))),
    ("utm_source=vendor&utm_medium=paid-video", None, Some(("vendor", Some("paid-video"), PaidOther))),
    ("utm_source=google&utm_medium=organic", None, Some(("google", Some("organic"), OrganicSearch))),
    ("utm_source=newsletter&utm_medium=organic", None, Some(("newsletter", Some("organic"), OrganicSearch))),
    ("utm_source=google&utm_medium=display", None, Some(("google", Some("display"), Display))),
    ("utm_source=dv360&utm_medium=cpm", None, Some(("dv360", Some("cpm"), Display))),
    ("utm_source=adnet&utm_medium=banner", None, Some(("adnet", Some("banner"), Display))),
    ("utm_source=adnet&utm_medium=interstitial", None, Some(("adnet", Some("interstitial"), Display))),
    ("utm_source=adnet&utm_medium=cpc", None, Some(("adnet", Some("cpc"), PaidOther))),
    ("utm_source=criteo&utm_medium=retargeting", None, Some(("criteo", Some("retargeting"), PaidOther))),
    ("utm_source=newsletter&utm_medium=email", None, Some(("newsletter", Some("email"), Email))),
    ("utm_source=mailchimp&utm_medium=e_mail", None, Some(("mailchimp", Some("e_mail"), Email))),
    ("utm_source=klaviyo&utm_medium=E-Mail", None, Some(("klaviyo", Some("E-Mail"), Email))),
    ("utm_source=email", None, Some(("email", None, Email))),
    ("utm_source=partner&utm_medium=affiliate", None, Some(("partner", Some("affiliate"), Affiliates))),
    ("utm_source=awin&utm_medium=Affiliate", None, Some(("awin", Some("Affiliate"), Affiliates))),
    ("utm_source=blog&utm_medium=referral", None, Some(("blog", Some("referral"), Referral))),
    ("utm_source=partner.example&utm_medium=link", None, Some(("partner.example", Some("link"), Referral))),
    ("utm_source=store&utm_medium=app", None, Some(("store", Some("app"), Referral))),
    ("utm_source=spotify&utm_medium=audio", None, Some(("spotify", Some("audio"), Audio))),
    ("utm_source=twilio&utm_medium=sms", None, Some(("twilio", Some("sms"), Sms))),
    ("utm_source=sms", None, Some(("sms", None, Sms))),
    ("utm_source=braze&utm_medium=push", None, Some(("braze", Some("push"), MobilePush))),
    ("utm_source=onesignal&utm_medium=web-push", None, Some(("onesignal", Some("web-push"), MobilePush))),
    ("utm_source=app&utm_medium=mobile-app", None, Some(("app", Some("mobile-app"), MobilePush))),
    ("utm_source=app&utm_medium=in-app-notification", None, Some(("app", Some("in-app-notification"), MobilePush))),
    ("utm_source=firebase&utm_medium=fcm", None, Some(("firebase", Some("fcm"), MobilePush))),
    ("utm_source=google&utm_medium=cpc&utm_campaign=Cross-Network_PMax", None, Some(("google", Some("cpc"), CrossNetwork))),
    ("utm_source=facebook&utm_medium=social&utm_campaign=cross-network", None, Some(("facebook", Some("social"), CrossNetwork))),
    ("utm_source=google&utm_medium=cpc&utm_campaign=Shopping_DE", None, Some(("google", Some("cpc"), PaidShopping))),
    ("utm_source=adnet&utm_medium=cpc&utm_campaign=eshop", None, Some(("adnet", Some("cpc"), PaidShopping))),
    ("utm_source=adnet&utm_medium=cpc&utm_campaign=workshop", None, Some(("adnet", Some("cpc"), PaidOther))),
    ("utm_source=newsletter&utm_medium=email&utm_campaign=shop-the-sale", None, Some(("newsletter", Some("email"), OrganicShopping))),
    ("utm_source=instagram&utm_campaign=summer_shop", None, Some(("instagram", None, OrganicShopping))),
    ("utm_source=(direct)&utm_medium=(none)", None, Some(("(direct)", Some("(none)"), Direct))),
    ("utm_source=(direct)", None, Some(("(direct)", None, Direct))),
    ("utm_source=partner&utm_medium=weird", None, Some(("partner", Some("weird"), Unassigned))),
    ("utm_source=taboola&utm_medium=native", None, Some(("taboola", Some("native"), Unassigned))),
    ("utm_source=newsletter", None, Some(("newsletter", None, Unassigned))),
    ("utm_campaign=spring", None, Some(("(not set)", None, Unassigned))),
    ("utm_term=shoes", None, Some(("(not set)", None, Unassigned))),
    // Click ids: the network and its default medium.
    ("gclid=1", None, Some(("google", Some("cpc"), PaidSearch))),
    ("gbraid=1", None, Some(("google", Some("cpc"), PaidSearch))),
    ("wbraid=1", None, Some(("google", Some("cpc"), PaidSearch))),
    ("dclid=1", None, Some(("google", Some("display"), Display))),
    ("fbclid=1", None, Some(("facebook", Some("cpc"), PaidSocial))),
    ("msclkid=1", None, Some(("bing", Some("cpc"), PaidSearch))),
    ("ttclid=1", None, Some(("tiktok", Some("cpc"), PaidSocial))),
    ("li_fat_id=1", None, Some(("linkedin", Some("cpc"), PaidSocial))),
    ("twclid=1", None, Some(("twitter", Some("cpc"), PaidSocial))),
    ("rdt_cid=1", None, Some(("reddit", Some("cpc"), PaidSocial))),
    ("epik=1", None, Some(("pinterest", Some("cpc"), PaidSocial))),
    ("ScCid=1", None, Some(("snapchat", Some("cpc"), PaidSocial))),
    ("qclid=1", None, Some(("quora", Some("cpc"), PaidSocial))),
    ("yclid=1", None, Some(("yandex", Some("cpc"), PaidSearch))),
    ("irclid=1", None, Some(("impact", Some("affiliate"), Affiliates))),
    ("irclid=1&utm_source=partner", None, Some(("partner", Some("affiliate"), Affiliates))),
    ("gclid=1&utm_campaign=shopping_feed", None, Some(("google", Some("cpc"), PaidShopping))),
    ("gclid=1&utm_source=newsletter&utm_medium=email", None, Some(("newsletter", Some("email"), Email))),
    ("fbclid=1&utm_medium=social", None, Some(("facebook", Some("social"), OrganicSocial))),
    // Tags win over the referrer, whatever it is.
    ("gclid=1", Some("https://www.google.com/"), Some(("google", Some("cpc"), PaidSearch))),
    ("fbclid=1", Some("https://l.facebook.com/"), Some(("facebook", Some("cpc"), PaidSocial))),
    ("gclid=1", Some("https://www.paypal.com/"), Some(("google", Some("cpc"), PaidSearch))),
    ("utm_source=newsletter&utm_medium=email", Some("https://shop.example/"), Some(("newsletter", Some("email"), Email))),
    // Untagged query parameters are no tags.
    ("q=shoes&page=2", Some("https://www.google.com/"), Some(("google", Some("organic"), OrganicSearch))),
    ("q=shoes", None, None),
];

#[test]
fn referrals_follow_the_lists_and_ga4_rules() {
    check(REFERRALS, &ReferralRules::default());
}

#[test]
fn tagged_visits_follow_ga4_rules() {
    check(TAGGED, &ReferralRules::default());
}

#[test]
fn the_table_has_at_least_a_hundred_rows() {
    assert!(REFERRALS.len() + TAGGED.len() >= 100);
}

#[test]
fn the_sites_domains_and_ignored_referrers_are_not_touchpoints() {
    let open = ReferralRules::default();
    let rules = ReferralRules {
        domains: vec!["shop.example".into(), "*.shop-cdn.example".into()],
        ignore_referrers: vec!["accounts.sso.example".into(), "Bank.Example".into()],
    };
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("", Some("https://blog.shop.example/post"), None),
        ("", Some("https://img.shop-cdn.example/"), None),
        ("", Some("https://accounts.sso.example/login"), None),
        ("", Some("https://eu.accounts.sso.example/login"), None),
        ("", Some("https://secure.bank.example/3ds"), None),
        ("", Some("https://sso.example/"), Some(("sso.example", Some("referral"), Referral))),
        ("", Some("https://shop.example.evil.example/"), Some(("evil.example", Some("referral"), Referral))),
        ("", Some("https://www.google.com/"), Some(("google", Some("organic"), OrganicSearch))),
        ("", Some("android-app://com.example.reader/"), Some(("com.example.reader", Some("referral"), Referral))),
    ];
    check(rows, &rules);
    // An app id can be ignored as well.
    let apps = ReferralRules {
        domains: vec![],
        ignore_referrers: vec!["com.bank.app".into()],
    };
    check(&[("", Some("android-app://com.bank.app/"), None)], &apps);
    // Without the site's domains its other hosts are referrals.
    check(
        &[(
            "",
            Some("https://blog.shop.example/post"),
            Some(("shop.example", Some("referral"), Referral)),
        )],
        &open,
    );
}

#[test]
fn campaign_and_ad_labels_come_from_the_tags() {
    let l = labels_of(
        &page("gclid=1&utm_campaign=black-friday&utm_content=hero"),
        None,
        &ReferralRules::default(),
    )
    .unwrap();
    assert_eq!(l.campaign.as_deref(), Some("black-friday"));
    assert_eq!(l.ad.as_deref(), Some("hero"));
    let l = labels_of(
        &page("utm_source=x&ad_id=42&utm_content=hero"),
        None,
        &ReferralRules::default(),
    )
    .unwrap();
    assert_eq!(l.ad.as_deref(), Some("42"));
    let l = labels_of(
        PAGE,
        Some("https://www.google.com/"),
        &ReferralRules::default(),
    )
    .unwrap();
    assert_eq!((l.campaign, l.ad), (None, None));
}

#[test]
fn labels_are_bounded_as_a_touchpoint_keeps_them() {
    let long = "a".repeat(500);
    let url = format!("{PAGE}?utm_source={long}&utm_medium=cpc&utm_campaign={long}");
    let l = labels_of(&url, None, &ReferralRules::default()).unwrap();
    assert_eq!(l.source.len(), MAX_DIMENSION_BYTES);
    assert_eq!(l.campaign.unwrap().len(), MAX_DIMENSION_BYTES);
    let host = format!("{}.example", "b".repeat(60));
    let (source, medium) = Classifier::embedded().referral(&host);
    assert_eq!((source.as_str(), medium), (host.as_str(), "referral"));
}

#[test]
fn referral_normalises_the_host() {
    let c = Classifier::embedded();
    assert_eq!(
        c.referral("WWW.Google.COM."),
        ("google".to_owned(), "organic")
    );
    assert_eq!(
        c.referral("www.facebook.com:443"),
        ("facebook".to_owned(), "social")
    );
    assert_eq!(c.referral("[::1]"), ("::1".to_owned(), "referral"));
    assert_eq!(c.referral(""), ("(not set)".to_owned(), "referral"));
    // `mail.ru` is a portal, not a mail subdomain.
    assert_ne!(c.referral("mail.ru").1, "email");
}

#[test]
fn the_embedded_lists_parse_and_hold_the_big_names() {
    let c = Classifier::embedded();
    assert!(c.search_hosts.len() > 300, "{}", c.search_hosts.len());
    assert!(c.social_hosts.len() > 100, "{}", c.social_hosts.len());
    for name in ["google", "bing", "yahoo", "baidu", "yandex", "duckduckgo"] {
        assert_eq!(c.named.get(name), Some(&Category::Search), "{name}");
    }
    for name in [
        "facebook",
        "twitter",
        "linkedin",
        "instagram",
        "youtube",
        "myspace",
    ] {
        assert_eq!(c.named.get(name), Some(&Category::Social), "{name}");
    }
}

#[test]
fn load_reads_lists_and_source_categories_from_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("SearchEngines.yml"),
        "Findit:\n  -\n    urls:\n      - findit.example\n      - 'findit.{}'\n    params:\n      - q\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("Socials.yml"),
        "Chatter:\n  - chatter.example\n",
    )
    .unwrap();
    let csv = dir.path().join("categories.csv");
    std::fs::write(
        &csv,
        "source,source category\nyoutube,SOURCE_CATEGORY_VIDEO\n\"amazon\",SOURCE_CATEGORY_SHOPPING\nwww.tube.example,SOURCE_CATEGORY_VIDEO\n",
    )
    .unwrap();
    let c = Classifier::load(Some(dir.path()), Some(&csv)).unwrap();
    assert_eq!(c.referral("findit.co.uk"), ("findit".to_owned(), "organic"));
    assert_eq!(
        c.referral("m.chatter.example"),
        ("chatter".to_owned(), "social")
    );
    assert_eq!(
        c.referral("www.google.com"),
        ("google.com".to_owned(), "referral")
    );
    assert_eq!(c.channel("findit", Some("cpc"), None), PaidSearch);
    assert_eq!(c.channel("youtube", Some("cpc"), None), PaidVideo);
    assert_eq!(c.channel("youtube", Some("referral"), None), OrganicVideo);
    assert_eq!(c.channel("amazon", Some("cpc"), None), PaidShopping);
    assert_eq!(c.channel("amazon", None, None), OrganicShopping);
    assert_eq!(c.channel("tube.example", Some("paid"), None), PaidVideo);
    // The embedded lists with Google's categories on top.
    let c = Classifier::load(None, Some(&csv)).unwrap();
    assert_eq!(c.channel("youtube", Some("cpc"), None), PaidVideo);
    assert_eq!(c.channel("google", Some("cpc"), None), PaidSearch);
    // Without the CSV YouTube is a social network, as in Matomo's list.
    assert_eq!(
        Classifier::embedded().channel("youtube", Some("cpc"), None),
        PaidSocial
    );
}

#[test]
fn load_errors_say_which_file_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let err = Classifier::load(Some(dir.path()), None).unwrap_err();
    assert!(matches!(err, ReferrerListError::Read { .. }), "{err}");
    assert!(err.to_string().contains("SearchEngines.yml"), "{err}");
    std::fs::write(dir.path().join("SearchEngines.yml"), "a: [b\n").unwrap();
    std::fs::write(dir.path().join("Socials.yml"), "X:\n  - x.example\n").unwrap();
    let err = Classifier::load(Some(dir.path()), None).unwrap_err();
    assert!(matches!(err, ReferrerListError::Invalid { .. }), "{err}");
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, "source,category\nyoutube,SOURCE_CATEGORY_MUSIC\n").unwrap();
    let err = Classifier::load(None, Some(&csv)).unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn channel_is_case_insensitive_and_ignores_surrounding_space() {
    let c = Classifier::embedded();
    assert_eq!(c.channel("GOOGLE", Some(" CPC "), None), PaidSearch);
    assert_eq!(c.channel("Facebook", Some("Social"), None), OrganicSocial);
    assert_eq!(c.channel("(Direct)", Some("(NONE)"), None), Direct);
    assert_eq!(c.channel("(direct)", Some("cpc"), None), PaidOther);
    assert_eq!(c.channel("x", None, Some("CROSS-NETWORK")), CrossNetwork);
}

#[test]
fn a_hostile_two_kilobyte_referrer_is_handled() {
    let rules = ReferralRules {
        domains: vec!["shop.example".into()],
        ignore_referrers: vec!["a.example".into()],
    };
    let dots = format!("https://{}x/", "a.".repeat(1100));
    let labels = format!("https://{}.example/", "a-".repeat(1100));
    let query = format!("https://ref.example/?{}", "%00&".repeat(600));
    let braces = format!("https://{}google.com/", "{}.".repeat(700));
    let mail = format!("https://mail.{}/", "mail.".repeat(500));
    for r in [dots, labels, query, braces, mail] {
        let started = std::time::Instant::now();
        let _ = labels_of(PAGE, Some(&r), &rules);
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{r}");
    }
}

proptest! {
    #[test]
    fn any_referrer_never_panics_and_is_deterministic(r in ".{0,300}", host in "[a-z0-9.{}:-]{0,80}") {
        let rules = ReferralRules::default();
        let a = labels_of(PAGE, Some(&r), &rules);
        let b = labels_of(PAGE, Some(&r), &rules);
        prop_assert_eq!(&a, &b);
        if let Some(l) = a {
            prop_assert!(l.source.len() <= MAX_DIMENSION_BYTES);
        }
        let url = format!("https://{host}/");
        prop_assert_eq!(labels_of(PAGE, Some(&url), &rules), labels_of(PAGE, Some(&url), &rules));
        let (source, medium) = Classifier::embedded().referral(&host);
        prop_assert!(source.len() <= MAX_DIMENSION_BYTES);
        prop_assert!(["organic", "social", "email", "referral"].contains(&medium));
    }

    #[test]
    fn any_labels_never_panic_and_classify_the_same_way(
        source in ".{0,300}",
        medium in proptest::option::of(".{0,300}"),
        campaign in proptest::option::of(".{0,300}"),
    ) {
        let c = Classifier::embedded();
        let a = c.channel(&source, medium.as_deref(), campaign.as_deref());
        prop_assert_eq!(a, c.channel(&source, medium.as_deref(), campaign.as_deref()));
    }

    #[test]
    fn any_tagged_url_never_panics(query in "[a-zA-Z_=&%0-9.() -]{0,200}", r in proptest::option::of(".{0,100}")) {
        let url = format!("{PAGE}?{query}");
        let rules = ReferralRules { domains: vec!["shop.example".into()], ignore_referrers: vec![] };
        let a = labels_of(&url, r.as_deref(), &rules);
        prop_assert_eq!(&a, &labels_of(&url, r.as_deref(), &rules));
        if let Some(l) = a {
            prop_assert!(l.source.len() <= MAX_DIMENSION_BYTES);
            prop_assert!(l.medium.map_or(0, |m| m.len()) <= MAX_DIMENSION_BYTES);
        }
    }
}
