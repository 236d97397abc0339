//! The scheduler: every source on its cron schedule.
