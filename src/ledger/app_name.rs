//! An app id as a user's month stores it: inline when short, so comparing it with the caller's
//! app id (on every charge) reads no other cache line.

use std::cmp::Ordering;

use smallvec::SmallVec;

/// Bytes of an app id kept inline (`os-global` and most ids fit; longer ones are allocated).
const INLINE: usize = 16;

/// The UTF-8 bytes of an app id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AppName(SmallVec<[u8; INLINE]>);

impl AppName {
    pub fn new(app_id: &str) -> AppName {
        AppName(SmallVec::from_slice(app_id.as_bytes()))
    }

    /// Whether this is `app_id`.
    pub fn is(&self, app_id: &str) -> bool {
        self.0.as_slice() == app_id.as_bytes()
    }

    /// The order of `str` (bytewise), against `app_id`.
    pub fn cmp_str(&self, app_id: &str) -> Ordering {
        self.0.as_slice().cmp(app_id.as_bytes())
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("built from a str")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_names_compare_as_their_strs() {
        let long = "an-app-id-longer-than-sixteen-bytes";
        let names = ["os-global", long, "app-a", "", "é-app"];
        for a in names {
            let name = AppName::new(a);
            assert_eq!(name.as_str(), a);
            assert!(name.is(a));
            for b in names {
                assert_eq!(name.cmp_str(b), a.cmp(b), "{a} vs {b}");
                assert_eq!(name.is(b), a == b);
                assert_eq!(name.cmp(&AppName::new(b)), a.cmp(b));
            }
        }
    }
}
