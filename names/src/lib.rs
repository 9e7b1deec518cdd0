//! The one rule for MetaBridge service names, in a crate of its own so
//! that the runtime (`metabridge::validate_service_name`, and through it
//! the Python package) and the `#[metabridge::service]` macro's
//! compile-time check apply the same rule: the macro crate cannot depend
//! on the runtime, which depends on it.
//!
//! A name becomes a file name in `$METABRIDGE_HOME` and is what a person
//! reads in `metabridge list`, so it must be safe as the one and
//! unambiguous as the other. Besides the file-name rules (length, no `/`,
//! `\`, control characters, `.`/`..`, no leading or trailing whitespace)
//! it may hold no character that renders as nothing or moves the text
//! around it: two names that differ only by a U+200B ZERO WIDTH SPACE, or
//! where U+202E RIGHT-TO-LEFT OVERRIDE reverses what follows, would look
//! identical in a listing. See [`is_invisible`] for the exact set.

/// Longest service name, in bytes: it is part of the control socket's
/// path, which the kernel limits to 108 bytes.
pub const MAX_SERVICE_NAME_LEN: usize = 64;

/// What is wrong with `name` as a service name, or `None` if it is valid:
/// 1 to [`MAX_SERVICE_NAME_LEN`] bytes of UTF-8, without control
/// characters, invisible or direction-changing characters
/// ([`is_invisible`]), `/` or `\`; not `.` or `..`; without leading or
/// trailing whitespace.
///
/// ```
/// use metabridge_names::service_name_problem as problem;
/// assert_eq!(problem("serviço de teste"), None);
/// assert!(problem("pay\u{202e}lexe").unwrap().contains("U+202E"));
/// ```
pub fn service_name_problem(name: &str) -> Option<String> {
    let problem = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > MAX_SERVICE_NAME_LEN {
        format!(
            "it is {} bytes long, more than {MAX_SERVICE_NAME_LEN}",
            name.len()
        )
    } else if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || *c == '/' || *c == '\\')
    {
        format!("it contains {c:?}")
    } else if let Some(c) = name.chars().find(|&c| is_invisible(c)) {
        format!(
            "it contains {c:?} (U+{:04X}), an invisible or direction-changing character",
            c as u32
        )
    } else if name == "." || name == ".." {
        "it is a directory name".to_owned()
    } else if name.trim() != name {
        "it starts or ends with whitespace".to_owned()
    } else {
        return None;
    };
    Some(format!(
        "{problem}; a service name is 1 to {MAX_SERVICE_NAME_LEN} bytes, without control or \
         invisible characters (Unicode format characters such as U+200B or U+202E, spaces \
         other than ' '), '/' or '\\'"
    ))
}

/// Whether `c` is a character a service name may not hold because it is
/// invisible or changes the direction of the text around it:
///
/// - every Unicode format character (general category Cf: U+200B..U+200F
///   zero-width characters and direction marks, U+202A..U+202E and
///   U+2066..U+2069 embeddings, overrides and isolates, U+FEFF, U+00AD
///   SOFT HYPHEN, the tag characters U+E0001 and U+E0020..U+E007F, ...);
/// - the rest of Unicode's Default_Ignorable_Code_Point set, which fonts
///   draw as nothing (variation selectors, U+034F COMBINING GRAPHEME
///   JOINER, the Hangul fillers U+115F, U+1160, U+3164, U+FFA0, and the
///   code points reserved for more of them, U+2065, U+FFF0..U+FFF8,
///   U+E0000..U+E0FFF);
/// - every space and line or paragraph separator other than the ASCII
///   space (Zs, Zl, Zp: U+00A0 NO-BREAK SPACE, U+2000..U+200A, U+2028,
///   U+2029, U+3000, ...), which looks like ' ' or breaks the line.
///
/// Control characters (Cc) are refused by the name rule separately.
/// Unicode 15.1's tables; a format character added by a later version is
/// let through until this table learns it.
pub fn is_invisible(c: char) -> bool {
    if c.is_ascii() {
        return false; // the fast path: every ASCII character is visible or Cc
    }
    INVISIBLE
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// The ranges of [`is_invisible`], sorted and disjoint (inclusive bounds;
/// the category of each range in brackets).
const INVISIBLE: &[(char, char)] = &[
    ('\u{00A0}', '\u{00A0}'),   // NO-BREAK SPACE [Zs]
    ('\u{00AD}', '\u{00AD}'),   // SOFT HYPHEN [Cf]
    ('\u{034F}', '\u{034F}'),   // COMBINING GRAPHEME JOINER [Mn, ignorable]
    ('\u{0600}', '\u{0605}'),   // ARABIC NUMBER SIGN .. NUMBER MARK ABOVE [Cf]
    ('\u{061C}', '\u{061C}'),   // ARABIC LETTER MARK [Cf]
    ('\u{06DD}', '\u{06DD}'),   // ARABIC END OF AYAH [Cf]
    ('\u{070F}', '\u{070F}'),   // SYRIAC ABBREVIATION MARK [Cf]
    ('\u{0890}', '\u{0891}'),   // ARABIC POUND / PIASTRE MARK ABOVE [Cf]
    ('\u{08E2}', '\u{08E2}'),   // ARABIC DISPUTED END OF AYAH [Cf]
    ('\u{115F}', '\u{1160}'),   // HANGUL CHOSEONG / JUNGSEONG FILLER [Lo, ignorable]
    ('\u{1680}', '\u{1680}'),   // OGHAM SPACE MARK [Zs]
    ('\u{17B4}', '\u{17B5}'),   // KHMER VOWEL INHERENT AQ, AA [Mn, ignorable]
    ('\u{180B}', '\u{180F}'),   // MONGOLIAN VARIATION SELECTORS, VOWEL SEPARATOR [Mn, Cf]
    ('\u{2000}', '\u{200F}'),   // EN QUAD .. HAIR SPACE [Zs], ZERO WIDTH SPACE .. RLM [Cf]
    ('\u{2028}', '\u{202F}'),   // LINE, PARAGRAPH SEPARATOR [Zl, Zp], LRE .. RLO [Cf], NNBSP [Zs]
    ('\u{205F}', '\u{206F}'),   // MEDIUM MATH SPACE [Zs], WORD JOINER .. NOMINAL DIGIT SHAPES [Cf]
    ('\u{3000}', '\u{3000}'),   // IDEOGRAPHIC SPACE [Zs]
    ('\u{3164}', '\u{3164}'),   // HANGUL FILLER [Lo, ignorable]
    ('\u{FE00}', '\u{FE0F}'),   // VARIATION SELECTOR-1 .. 16 [Mn, ignorable]
    ('\u{FEFF}', '\u{FEFF}'),   // ZERO WIDTH NO-BREAK SPACE (BOM) [Cf]
    ('\u{FFA0}', '\u{FFA0}'),   // HALFWIDTH HANGUL FILLER [Lo, ignorable]
    ('\u{FFF0}', '\u{FFFB}'),   // reserved [ignorable], INTERLINEAR ANNOTATION [Cf]
    ('\u{110BD}', '\u{110BD}'), // KAITHI NUMBER SIGN [Cf]
    ('\u{110CD}', '\u{110CD}'), // KAITHI NUMBER SIGN ABOVE [Cf]
    ('\u{13430}', '\u{1343F}'), // EGYPTIAN HIEROGLYPH FORMAT CONTROLS [Cf]
    ('\u{1BCA0}', '\u{1BCA3}'), // SHORTHAND FORMAT CONTROLS [Cf]
    ('\u{1D173}', '\u{1D17A}'), // MUSICAL SYMBOL BEGIN BEAM .. END PHRASE [Cf]
    ('\u{E0000}', '\u{E0FFF}'), // TAGS [Cf], VARIATION SELECTORS SUPPLEMENT [Mn, ignorable]
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_disjoint() {
        for w in INVISIBLE.windows(2) {
            assert!(w[0].0 <= w[0].1 && w[0].1 < w[1].0, "{w:?}");
        }
    }

    #[test]
    fn invisible_and_direction_changing_characters_are_refused() {
        for c in [
            '\u{202E}',
            '\u{202A}',
            '\u{2066}',
            '\u{2069}',
            '\u{200B}',
            '\u{200D}',
            '\u{200E}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{2060}',
            '\u{00A0}',
            '\u{3000}',
            '\u{2028}',
            '\u{3164}',
            '\u{FE0F}',
            '\u{E0041}',
            '\u{E01EF}',
            '\u{1D173}',
            '\u{180E}',
        ] {
            assert!(is_invisible(c), "U+{:04X}", c as u32);
            let name = format!("look{c}alike");
            let problem = service_name_problem(&name).expect("refused");
            assert!(
                problem.contains(&format!("U+{:04X}", c as u32)),
                "{problem}"
            );
        }
        // Both ends of every range.
        for &(lo, hi) in INVISIBLE {
            assert!(is_invisible(lo) && is_invisible(hi));
        }
    }

    #[test]
    fn visible_names_in_any_script_are_accepted() {
        for name in [
            "demo-service",
            "serviço de teste",
            "сервис",
            "サービス",
            "خدمة",
            "שירות",
            "Dienst_2",
            "naïve.café",
            "🦀",
            "a b",
        ] {
            assert_eq!(service_name_problem(name), None, "{name}");
        }
        for c in ['~', ' ', 'é', 'ß', '\u{2800}', '\u{1F980}', '\u{10FFFF}'] {
            assert!(!is_invisible(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn the_file_name_rules_still_hold() {
        for bad in [
            "", "a/b", "a\\b", "a\0b", "a\nb", ".", "..", " padded", "trail ",
        ] {
            assert!(service_name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(service_name_problem(&"x".repeat(65)).is_some());
        assert_eq!(service_name_problem(&"x".repeat(64)), None);
    }
}
