//! Channels: GA4's default channel group, the coarse "where did this visit
//! come from" that reports and data-driven credit group touchpoints by.
//!
//! The names and their order are Google's, so a number here reads like the
//! same number in Google Analytics:
//! - default channel group rules:
//!   <https://support.google.com/analytics/answer/9756891>
//! - source categories (which sources count as search, social, video,
//!   shopping): <https://support.google.com/analytics/answer/9756891#categories>
//!
//! The rules that pick a channel from a touchpoint's source, medium and
//! campaign live in [`crate::domain::referrer::Classifier::channel`].

use serde::{Deserialize, Serialize};

/// A GA4 default channel group. Declared in the order GA4 evaluates its
/// rules (first match wins), with `Unassigned` (no rule matched) and
/// `Direct` (no touchpoint at all) last. Serialized as its display name
/// (`"Paid Search"`, `"SMS"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Channel {
    #[serde(rename = "Cross-network")]
    CrossNetwork,
    #[serde(rename = "Paid Shopping")]
    PaidShopping,
    #[serde(rename = "Paid Search")]
    PaidSearch,
    #[serde(rename = "Paid Social")]
    PaidSocial,
    #[serde(rename = "Paid Video")]
    PaidVideo,
    #[serde(rename = "Display")]
    Display,
    #[serde(rename = "Paid Other")]
    PaidOther,
    #[serde(rename = "Organic Shopping")]
    OrganicShopping,
    #[serde(rename = "Organic Social")]
    OrganicSocial,
    #[serde(rename = "Organic Video")]
    OrganicVideo,
    #[serde(rename = "Organic Search")]
    OrganicSearch,
    #[serde(rename = "Email")]
    Email,
    #[serde(rename = "Affiliates")]
    Affiliates,
    #[serde(rename = "Referral")]
    Referral,
    #[serde(rename = "Audio")]
    Audio,
    #[serde(rename = "SMS")]
    Sms,
    #[serde(rename = "Mobile Push")]
    MobilePush,
    #[serde(rename = "Unassigned")]
    Unassigned,
    #[serde(rename = "Direct")]
    Direct,
}

impl Channel {
    /// Every channel, in declaration order.
    pub const ALL: [Channel; 19] = [
        Channel::CrossNetwork,
        Channel::PaidShopping,
        Channel::PaidSearch,
        Channel::PaidSocial,
        Channel::PaidVideo,
        Channel::Display,
        Channel::PaidOther,
        Channel::OrganicShopping,
        Channel::OrganicSocial,
        Channel::OrganicVideo,
        Channel::OrganicSearch,
        Channel::Email,
        Channel::Affiliates,
        Channel::Referral,
        Channel::Audio,
        Channel::Sms,
        Channel::MobilePush,
        Channel::Unassigned,
        Channel::Direct,
    ];

    /// The display name, as GA4 writes it (and as it is serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::CrossNetwork => "Cross-network",
            Channel::PaidShopping => "Paid Shopping",
            Channel::PaidSearch => "Paid Search",
            Channel::PaidSocial => "Paid Social",
            Channel::PaidVideo => "Paid Video",
            Channel::Display => "Display",
            Channel::PaidOther => "Paid Other",
            Channel::OrganicShopping => "Organic Shopping",
            Channel::OrganicSocial => "Organic Social",
            Channel::OrganicVideo => "Organic Video",
            Channel::OrganicSearch => "Organic Search",
            Channel::Email => "Email",
            Channel::Affiliates => "Affiliates",
            Channel::Referral => "Referral",
            Channel::Audio => "Audio",
            Channel::Sms => "SMS",
            Channel::MobilePush => "Mobile Push",
            Channel::Unassigned => "Unassigned",
            Channel::Direct => "Direct",
        }
    }

    /// The channel with this display name, ignoring ASCII case
    /// (`"paid search"`, `"SMS"`). GA4's longer `"Mobile Push
    /// Notifications"` and `"(Unassigned)"` are accepted too.
    pub fn parse(s: &str) -> Option<Channel> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("Mobile Push Notifications") {
            return Some(Channel::MobilePush);
        }
        if s.eq_ignore_ascii_case("(Unassigned)") {
            return Some(Channel::Unassigned);
        }
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_round_trips_through_its_name_and_its_json() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Some(c));
            assert_eq!(Channel::parse(&c.as_str().to_uppercase()), Some(c));
            assert_eq!(Channel::parse(&c.as_str().to_lowercase()), Some(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<Channel>(&json).unwrap(), c);
            assert_eq!(c.to_string(), c.as_str());
        }
        let mut names: Vec<_> = Channel::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Channel::ALL.len());
    }

    #[test]
    fn parse_knows_ga4_spellings_and_refuses_the_rest() {
        assert_eq!(Channel::parse("SMS"), Some(Channel::Sms));
        assert_eq!(Channel::parse("cross-network"), Some(Channel::CrossNetwork));
        assert_eq!(
            Channel::parse("Mobile Push Notifications"),
            Some(Channel::MobilePush)
        );
        assert_eq!(Channel::parse("(Unassigned)"), Some(Channel::Unassigned));
        assert_eq!(Channel::parse(" Direct "), Some(Channel::Direct));
        for bad in ["", "paid", "Paid  Search", "organic", "(direct)"] {
            assert_eq!(Channel::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn all_is_in_declaration_order() {
        let mut sorted = Channel::ALL;
        sorted.sort();
        assert_eq!(sorted, Channel::ALL);
    }
}
