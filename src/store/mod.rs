//! The archive store: all SQL lives here.
