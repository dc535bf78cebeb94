//! The dataset split a document belongs to.

use std::fmt;

/// The dataset split of a document, stored as its [`Split::as_str`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    /// `"train"`.
    Train,
    /// `"validation"`.
    Validation,
    /// `"test"`.
    Test,
}

impl Split {
    /// Every split, in the order rows are stored (train, validation, test).
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// The name stored in the `split` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// The position in [`Split::ALL`] (0, 1, 2): an index for per-split arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The split named `name`, or `None` for anything but the three stored names.
    pub fn from_name(name: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
