//! Enterprise identity: the 统一社会信用代码 (USCC) and the region code.
//!
//! The platform keys every figure by (region_code, uscc), so a typo here
//! files a factory's evidence under somebody else. We check the format
//! strictly (an error) and the GB 32100-2015 check character leniently
//! (a warning), because some early-issued codes fail the check yet are real.

/// The 31 characters a USCC may use, in value order (I, O, S, V, Z excluded).
const ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
/// GB 32100-2015 weights for characters 1..=17.
const WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// Outcome of checking a USCC.
#[derive(Debug, PartialEq, Eq)]
pub enum UsccCheck {
    Valid,
    /// Well-formed, but the 18th character is not the computed one.
    BadCheckChar {
        expected: char,
        found: char,
    },
}

fn value_of(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
}

/// A USCC that is not well-formed; says in words what is wrong.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsccError {
    #[error("must be 18 characters, found {0}")]
    Length(usize),
    #[error(
        "character {position} ({found:?}) is not allowed there; a USCC uses digits and the capitals \
         A-H J-N P Q R T U W X Y (no I, O, S, V, Z)"
    )]
    Character { position: usize, found: char },
}

/// Checks a USCC: `Err` for a format problem, a wrong check character is
/// `Ok(BadCheckChar)` (see the module note).
pub fn check_uscc(code: &str) -> Result<UsccCheck, UsccError> {
    let bytes = code.as_bytes();
    if bytes.len() != 18 {
        return Err(UsccError::Length(code.chars().count()));
    }
    for (i, &b) in bytes.iter().enumerate() {
        let ok = match i {
            // Characters 3..=8 are the registering authority's region code.
            2..=7 => b.is_ascii_digit(),
            _ => value_of(b).is_some(),
        };
        if !ok {
            return Err(UsccError::Character {
                position: i + 1,
                found: char::from(b),
            });
        }
    }
    let sum: u32 = bytes[..17]
        .iter()
        .zip(WEIGHTS)
        .map(|(&b, w)| value_of(b).unwrap_or(0) * w)
        .sum();
    let check = (31 - sum % 31) % 31;
    let expected = char::from(ALPHABET[check as usize]);
    let found = char::from(bytes[17]);
    if expected == found {
        Ok(UsccCheck::Valid)
    } else {
        Ok(UsccCheck::BadCheckChar { expected, found })
    }
}

/// Yangzhou's GB/T 2260 codes: the city and its districts and counties.
pub const YANGZHOU_REGIONS: &[(&str, &str)] = &[
    ("321000", "扬州市"),
    ("321002", "广陵区"),
    ("321003", "邗江区"),
    ("321012", "江都区"),
    ("321023", "宝应县"),
    ("321081", "仪征市"),
    ("321084", "高邮市"),
];

/// The name of a Yangzhou region code, if it is one.
pub fn yangzhou_region_name(code: &str) -> Option<&'static str> {
    YANGZHOU_REGIONS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_code_is_valid() {
        assert_eq!(check_uscc("91350100M000100Y43"), Ok(UsccCheck::Valid));
    }

    #[test]
    fn wrong_check_char_is_reported_with_the_expected_one() {
        assert_eq!(
            check_uscc("91350100M000100Y44"),
            Ok(UsccCheck::BadCheckChar {
                expected: '3',
                found: '4'
            })
        );
    }

    #[test]
    fn bad_formats_are_errors() {
        assert!(check_uscc("91350100M000100Y4").is_err());
        assert!(check_uscc("91350100M000100YI3").is_err()); // I is excluded
        assert!(check_uscc("9135A100M000100Y43").is_err()); // region must be digits
        assert!(check_uscc("91350100m000100Y43").is_err()); // lower case
    }
}
