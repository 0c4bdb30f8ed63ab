/**
 * What every service's routes share: the request context (Env), the error responses every route
 * documents, route definitions (def: bearer security, the errors, 415 for JSON bodies) and the
 * audit hook. Each service registers its routes in its folder (identity/routes.ts, ...);
 * server.ts composes them into one app.
 */
import { createRoute, type OpenAPIHono, type RouteConfig, type z } from "@hono/zod-openapi";
import type { Cloud, Principal } from "./cloud.js";
import * as S from "./schemas.js";

export type Env = {
  Variables: {
    principal: Principal;
    audit: { action: string; resource: string } | undefined;
    errorCode: string | undefined;
    errorMessage: string | undefined;
  };
};

export const errorBody = (code: string, message: string) => ({ error: { code, message } });
export const json = <T extends z.ZodTypeAny>(schema: T, description: string) => ({
  content: { "application/json": { schema } },
  description,
});
export const ERRORS = {
  400: json(S.ErrorSchema, "invalid_request: the message names the field"),
  401: json(S.ErrorSchema, "unauthorized"),
  403: json(S.ErrorSchema, "forbidden, or quota_exceeded (the message names the quota)"),
  404: json(S.ErrorSchema, "not_found (also for other projects' resources)"),
  409: json(S.ErrorSchema, "conflict: the state machine or a name refuses"),
  413: json(S.ErrorSchema, "too_large: a JSON body over 1 MiB, or an upload over its cap"),
  429: json(
    S.ErrorSchema,
    "rate_limited: too many requests for this token, or failed logins from this address; see Retry-After",
  ),
};
/** Routes with a JSON body also refuse other content types. */
const UNSUPPORTED_MEDIA_TYPE = {
  415: json(S.ErrorSchema, "unsupported_media_type: the body must be sent with Content-Type: application/json"),
};
export const body = <T extends z.ZodTypeAny>(schema: T) => ({
  body: {
    content: { "application/json": { schema } },
    required: true,
    description: "a JSON object of at most 1 MiB (larger bodies answer 413 too_large)",
  },
});

export function def<R extends RouteConfig>(r: R): R {
  const jsonBody = r.request?.body?.content["application/json"] !== undefined;
  return createRoute({
    security: [{ bearer: [] }],
    ...r,
    responses: { ...ERRORS, ...(jsonBody ? UNSUPPORTED_MEDIA_TYPE : {}), ...r.responses },
  }) as R;
}

/** A request's Content-Length, when it gives one. */
export function declaredLength(header: string | undefined): number | undefined {
  return header !== undefined && /^\d+$/.test(header) ? Number(header) : undefined;
}

/**
 * Names the action and resource of the request being served (its audit event and journal row),
 * once the handler knows them.
 */
export type Audit = (
  c: { set: (k: "audit", v: { action: string; resource: string }) => void },
  action: string,
  resource: string,
) => Promise<void>;

/** What a service's routes are registered with. */
export interface Routes {
  app: OpenAPIHono<Env>;
  cloud: Cloud;
  audit: Audit;
}
