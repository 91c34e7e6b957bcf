//! progressd tracks the progress of long-running jobs over HTTP.
pub mod domain;
