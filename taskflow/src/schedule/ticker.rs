//! Firing schedules.
