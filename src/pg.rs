//! Embedded PostgreSQL: find the server binaries, initialise, start, stop.
