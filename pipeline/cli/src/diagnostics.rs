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
        let hint = match &e {
            StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                Some("the disk is full: free space or point --store at another disk".to_string())
            }
            StoreError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Some("check the permissions of the store directory, or use --store DIR".to_string())
            }
            e if e.is_corruption() => Some(
                "run `ausa verify` to list damaged objects, then `ausa build <DAG> --force`"
                    .to_string(),
            ),
            _ => None,
        };
        CliError::failure(e.to_string(), hint)
    }
}
