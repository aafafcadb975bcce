//! The HTTP functions' public surface: the route table and `handle` (`crate::router`), the
//! `App` the use cases run with (`crate::usecase`). Functions and tests import from here.

pub use crate::router::{
    Function, Route, Store, confirmation, handle, payment_request, registration,
};
pub use crate::usecase::{App, NoQueue};
