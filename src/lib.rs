pub mod costmap;
pub mod money;
pub mod error;
pub mod ledger;
