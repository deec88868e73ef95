//! Clean text: the one rule for which characters a text field may hold.
//!
//! A control character (U+0000 to U+001F, tab excepted) in a hit, a goal
//! or a site's name or domains is refused, never stored: a NUL byte or a
//! line break kept in a campaign name comes back in every report, CSV
//! and log line that shows it. Every edge that accepts text calls
//! [`clean`] (through the domain types that own the field), so the rule
//! exists once. This module only judges text; it never rewrites it.

/// Why a text field was refused: it holds the control character `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` holds a control character (U+{code:04X})")]
pub struct ControlChar {
    /// The field as the client named it (`name`, `props`, `match.url`).
    pub field: String,
    pub code: u32,
}

/// Whether `c` is refused in text: C0 controls other than tab.
pub fn is_forbidden(c: char) -> bool {
    c <= '\u{1f}' && c != '\t'
}

/// The first forbidden character in `s`, if any.
pub fn first_control(s: &str) -> Option<char> {
    s.chars().find(|&c| is_forbidden(c))
}

/// `s` as the value of `field`, or why it may not be one.
pub fn clean(field: &str, s: &str) -> Result<(), ControlChar> {
    match first_control(s) {
        None => Ok(()),
        Some(c) => Err(ControlChar {
            field: field.to_owned(),
            code: u32::from(c),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tab_and_printable_text_pass_and_controls_are_named() {
        assert_eq!(clean("name", "Black\tFriday ünïcode €"), Ok(()));
        for bad in ["a\u{0}b", "line\nbreak", "cr\r", "\u{1b}[31m", "\u{1f}"] {
            let err = clean("campaign", bad).unwrap_err();
            assert_eq!(err.field, "campaign");
            assert!(err.to_string().contains("campaign"), "{err}");
        }
        assert_eq!(
            clean("x", "a\u{0}b").unwrap_err().to_string(),
            "field `x` holds a control character (U+0000)"
        );
        // DEL and C1 controls are not in the rule (API.md: U+0000-U+001F).
        assert_eq!(clean("x", "\u{7f}\u{85}"), Ok(()));
    }

    proptest! {
        #[test]
        fn clean_refuses_exactly_the_strings_holding_a_c0_control_other_than_tab(s in ".{0,40}") {
            let has = s.chars().any(|c| (c as u32) < 0x20 && c != '\t');
            prop_assert_eq!(clean("f", &s).is_err(), has);
        }
    }
}
