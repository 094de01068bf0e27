//! `/api/backends`: change backends at run time.
//!
//! (Skeleton; the API lands in a later commit.)

use http::{Response, StatusCode};

use super::{error_response, AdminRequest, AdminState};

/// Handles one `/api/backends...` request.
pub async fn handle(_state: &AdminState, _req: &AdminRequest) -> Response<Vec<u8>> {
    error_response(StatusCode::NOT_IMPLEMENTED, "not yet")
}
