//! The one error type of the CLI: a message, hints saying what to do, and the exit code.

use ausa_dag::DagError;
use ausa_store::StoreError;

/// An error ready for the user.
#[derive(Debug)]
pub struct CliError {
    /// The message (may span lines).
    pub message: String,
    /// `hint:` lines.
    pub hints: Vec<String>,
    /// 1 for failures, 2 for usage and configuration errors.
    pub code: i32,
}

impl CliError {
    /// A usage or configuration error (exit 2).
    pub fn usage(message: impl Into<String>, hint: Option<String>) -> CliError {
        CliError {
            message: message.into(),
            hints: hint.into_iter().collect(),
            code: 2,
        }
    }

    /// A failure of the work itself (exit 1).
    pub fn failure(message: impl Into<String>, hint: Option<String>) -> CliError {
        CliError {
            message: message.into(),
            hints: hint.into_iter().collect(),
            code: 1,
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        self.code
    }
}

impl From<DagError> for CliError {
    fn from(e: DagError) -> CliError {
        CliError::usage(e.to_string(), e.hint)
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> CliError {
        let hint = e.hint().or_else(|| {
            e.is_corruption().then(|| {
                "run `ausa verify` to list damaged objects, then `ausa build <DAG>:<STAGE> --force`"
                    .to_string()
            })
        });
        if e.is_bad_store_path() {
            CliError::usage(e.to_string(), hint)
        } else {
            CliError::failure(e.to_string(), hint)
        }
    }
}
