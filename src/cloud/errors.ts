/** The API's refusals: each becomes `{ error: { code, message } }` with its HTTP status. */
export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 409 | 413 | 500 | 503,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export const badRequest = (m: string): ApiError => new ApiError(400, "invalid_request", m);
export const unauthorized = (m: string): ApiError => new ApiError(401, "unauthorized", m);
export const forbidden = (m: string): ApiError => new ApiError(403, "forbidden", m);
export const quotaExceeded = (m: string): ApiError => new ApiError(403, "quota_exceeded", m);
export const notFound = (m: string): ApiError => new ApiError(404, "not_found", m);
export const conflict = (m: string): ApiError => new ApiError(409, "conflict", m);
