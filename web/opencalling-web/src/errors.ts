// The error codes of docs/protocol.md, with their meanings, and the error
// the SDK's methods throw and its promises reject with.

/** Every code of the protocol's error table (docs/protocol.md, "Error codes"). */
export const ErrorCode = {
  OK: 0,
  INVALID_USER_ID: 1001,
  INVALID_CALL_TYPE: 1002,
  INVALID_PARAMETER: 1003,
  NOT_LOGGED_IN: 2001,
  ALREADY_LOGGED_IN: 2002,
  UNKNOWN_APP: 2003,
  UNSUPPORTED_PROTOCOL_VERSION: 2004,
  USERSIG_MALFORMED: 2010,
  USERSIG_EXPIRED: 2011,
  USERSIG_BAD_SIGNATURE: 2012,
  USERSIG_WRONG_APP: 2013,
  USERSIG_WRONG_USER: 2014,
  USERSIG_NOT_YET_VALID: 2015,
  USERSIG_LIFETIME_TOO_LONG: 2016,
  SESSION_EXPIRED: 2017,
  NO_INVITATION: 3001,
  WRONG_CALL_STATE: 3002,
  NOT_IN_CALL: 3003,
  CANNOT_CALL_SELF: 3004,
  ALREADY_IN_CALL: 3005,
  CALL_FULL: 3006,
  CALL_TYPE_MISMATCH: 3007,
  MEDIA_ENCRYPTION_MISMATCH: 3008,
  KICKED_OFFLINE: 4001,
  CONNECTION_LOST: 4002,
  SERVER_SHUTDOWN: 4003,
  PROTOCOL_ERROR: 4004,
  SERVER_BUSY: 4005,
  TIMEOUT: 4006,
  SERVER_UNREACHABLE: 4007,
  CERTIFICATE_UNTRUSTED: 4008,
  PROTOCOL_MISMATCH: 4009,
  RATE_LIMITED: 4010,
  SERVER_DRAINING: 4011,
  CLUSTER_UNAVAILABLE: 4012,
  LOGGED_OUT_BY_OPERATOR: 4013,
  INTERNAL: 5000,
} as const;

const DESCRIPTIONS: Record<number, string> = {
  0: "success",
  1001: "a user id breaks the rule",
  1002: "not 1 or 2",
  1003: "other argument out of range",
  2001: "operation needs a session",
  2002: "login on a logged-in session",
  2003: "unknown sdkAppId",
  2004: "version mismatch",
  2010: "UserSig does not decode",
  2011: "UserSig expired",
  2012: "HMAC mismatch (tampered, other key)",
  2013: "issued for another sdkAppId",
  2014: "issued for another user",
  2015: "TLS.time further in the future than the allowed clock skew (default 5 min)",
  2016: "TLS.expire longer than the server allows (default 180 days)",
  2017: "a Resume for a session the server no longer has, or with a token that is not its own: log in afresh",
  3001: "accept/reject with nothing ringing",
  3002: "not possible in this state",
  3003: "no call to act on",
  3004: "invited yourself",
  3005: "invitee already in or invited to the call",
  3006: "over 16 members and invitees",
  3007: "invite into a call of another type",
  3008: "an invitee does not encrypt audio end to end as the call does (v7)",
  4001: "logged in elsewhere",
  4002: "connection lost",
  4003: "server shutting down",
  4004: "malformed or misplaced frame",
  4005: "server refuses more for now",
  4006: "request unanswered",
  4007: "client-side: no server answered within the connect timeout",
  4008: "client-side: the server's certificate is not the trusted one",
  4009: "client-side: the server speaks another protocol (ALPN, QUIC version)",
  4010: "over a rate limit (see Limits); going on gets the connection closed with it",
  4011: "the server takes no new login or call (its operator is taking it down); connect again later, or elsewhere",
  4012: "the server is one node of a cluster whose shared store it cannot reach: calls in progress go on, no new call starts until it is back (seconds); try again",
  4013: "(v4) the server's operator logged this user out: the session is over; do not log in again by itself",
  5000: "server-side bug; details in its log",
};

/** What a code means, in words. */
export function describeError(code: number): string {
  return DESCRIPTIONS[code] ?? `error ${code}`;
}

/** An error with the protocol's code: thrown by the SDK's methods, and what its promises reject with. */
export class CallingError extends Error {
  readonly code: number;

  constructor(code: number, message?: string) {
    super(message === undefined || message === "" ? describeError(code) : message);
    this.name = "CallingError";
    this.code = code;
  }
}
