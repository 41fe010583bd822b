//! Rate limits and LLM budgets counted across the fleet in Redis.

use super::*;
