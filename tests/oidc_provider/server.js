// A real OpenID provider (panva's oidc-provider) for hoop's test-suite.
//
// Listens on 127.0.0.1 only. Configuration, all optional:
//   --port N / PORT            port to bind (0 = any free one; the chosen one is printed)
//   ID_TOKEN_TTL               seconds an id_token lives (default 300)
//   ACCESS_TOKEN_TTL           seconds an access token lives (default: ID_TOKEN_TTL)
//   DEVICE_CODE_TTL            seconds a device_code / user_code lives (default 600)
//   DEVICE_INTERVAL            `interval` in device authorization responses (default 1)
//   MAX_LIFETIME               the process exits by itself after this many seconds (default 3600)
//
// Accounts: any login name, password "secret". sub = the login name.
//
// Test-only endpoints (nothing like them exists on a real provider):
//   POST /__test/device-behaviour {"interval": n, "slow_down_polls": k}
//        applies to the NEXT device authorization only: its response carries `interval` n and
//        its first k polls of the token endpoint are answered 400 {"error":"slow_down"}.
//   GET  /__test/polls?user_code=XXXX-XXXX
//        {"user_code", "interval", "slow_down_polls", "polls": [ms...], "answers": [...]}
//   GET  /__test/device-authorizations?after=SEQ
//        {"latest": SEQ, "authorizations": [{"seq", "user_code", "client_id", "scope", "created_ms"}]}
//   POST /__test/refresh-token-state {"refresh_token": "..."}
//        {"found", "consumed", "expired", "grant", "active"}; reading it changes nothing.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const BODY_LIMIT = 64 * 1024;
const PASSWORD = 'secret';

const ACCOUNTS = {
  alice: { groups: ['dba', 'developers'] },
  bob: { groups: ['developers'] },
  carol: { groups: ['approvers', 'auditors'] },
  'agent-1': { groups: ['agents'] },
};

function intFromEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  }
  return value;
}

const { values: argv } = parseArgs({
  options: { port: { type: 'string' } },
  strict: true,
});

const port = Number(argv.port ?? process.env.PORT ?? 0);
const idTokenTtl = intFromEnv('ID_TOKEN_TTL', 300);
const accessTokenTtl = intFromEnv('ACCESS_TOKEN_TTL', idTokenTtl);
const deviceCodeTtl = intFromEnv('DEVICE_CODE_TTL', 600);
const defaultInterval = intFromEnv('DEVICE_INTERVAL', 1);
const maxLifetime = intFromEnv('MAX_LIFETIME', 3600);

function claimsFor(login) {
  const known = ACCOUNTS[login] ?? { groups: [] };
  return {
    sub: login,
    email: `${login}@example.com`,
    email_verified: true,
    name: login.charAt(0).toUpperCase() + login.slice(1),
    preferred_username: login,
    groups: [...known.groups],
  };
}

// One RSA signing key per process: tokens from another run must not verify here.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: randomBytes(8).toString('hex'),
  use: 'sig',
  alg: 'RS256',
};

const publicClient = (clientId) => ({
  client_id: clientId,
  token_endpoint_auth_method: 'none',
  grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
  response_types: [],
  redirect_uris: [],
  id_token_signed_response_alg: 'RS256',
});

const configuration = {
  clients: [publicClient('hoop-cli'), publicClient('other-client')],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  // Put the scope-granted claims (email, groups, ...) in the id_token itself, not only in
  // the userinfo response: the gateway and Vault read them from the id_token.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false }, // ours below checks the password
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
  },
  // A refresh token is issued when the client may use the refresh_token grant and the person
  // granted offline_access, whichever grant (device_code included) redeemed the consent.
  async issueRefreshToken(ctx, client, code) {
    return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
  },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return claimsFor(sub);
      },
    };
  },
  ttl: {
    IdToken: idTokenTtl,
    AccessToken: accessTokenTtl,
    DeviceCode: deviceCodeTtl,
    Interaction: 600,
    Session: 3600,
    Grant: 14 * 24 * 3600,
    RefreshToken: 14 * 24 * 3600,
  },
};

const issuerFor = (p) => `http://127.0.0.1:${p}`;

// --- small helpers for our own pages and endpoints -------------------------------------------

async function readBody(ctx) {
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > BODY_LIMIT) ctx.throw(413, 'request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readForm(ctx) {
  return Object.fromEntries(new URLSearchParams(await readBody(ctx)));
}

async function readJson(ctx) {
  const raw = await readBody(ctx);
  try {
    return raw ? JSON.parse(raw) : {};
  } catch {
    return ctx.throw(400, 'body is not JSON');
  }
}

const escapeHtml = (value) => String(value)
  .replaceAll('&', '&amp;')
  .replaceAll('<', '&lt;')
  .replaceAll('>', '&gt;')
  .replaceAll('"', '&quot;')
  .replaceAll("'", '&#39;');

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body><h1>${escapeHtml(title)}</h1>
${body}
</body></html>`;
}

const normalizeUserCode = (code) => String(code ?? '').replace(/[^a-z0-9]/gi, '').toUpperCase();

// --- the person's pages: login and consent ------------------------------------------------------

function loginPage(uid, clientId, error) {
  return page('Sign-in', `
<p>Sign in to continue to <strong>${escapeHtml(clientId)}</strong></p>
${error ? `<p class="error">${escapeHtml(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <input type="text" name="login" placeholder="login" required autofocus>
  <input type="password" name="password" placeholder="password" required>
  <button type="submit">Sign-in</button>
</form>`);
}

function consentPage(uid, clientId, login, scopes) {
  const items = scopes.map((s) => `<li>${escapeHtml(s)}</li>`).join('');
  return page('Authorize', `
<p><strong>${escapeHtml(clientId)}</strong> asks, for <strong>${escapeHtml(login)}</strong>:</p>
<ul>${items}</ul>
<form id="consent" method="post" action="/interaction/${escapeHtml(uid)}/confirm">
  <button type="submit">Allow</button>
</form>
<form id="deny" method="post" action="/interaction/${escapeHtml(uid)}/abort">
  <button type="submit">Deny</button>
</form>`);
}

const INTERACTION = /^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/;

async function interactions(ctx, next) {
  const match = INTERACTION.exec(ctx.path);
  if (!match) return next();
  const [, uid, action] = match;
  ctx.set('cache-control', 'no-store');

  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Sign-in expired', `<p>${escapeHtml(err.message)}</p>`);
    return undefined;
  }
  if (details.uid !== uid) ctx.throw(400, 'interaction mismatch');
  const { prompt, params, session } = details;

  if (ctx.method === 'GET' && !action) {
    ctx.type = 'html';
    if (prompt.name === 'login') {
      ctx.body = loginPage(uid, params.client_id);
    } else if (prompt.name === 'consent') {
      const scopes = String(params.scope ?? '').split(' ').filter(Boolean);
      ctx.body = consentPage(uid, params.client_id, session?.accountId, scopes);
    } else {
      ctx.status = 501;
      ctx.body = page('Not implemented', `<p>prompt ${escapeHtml(prompt.name)}</p>`);
    }
    return undefined;
  }
  if (ctx.method !== 'POST' || !action) ctx.throw(405);

  if (action === 'login') {
    if (prompt.name !== 'login') ctx.throw(400, 'not at the login step');
    const form = await readForm(ctx);
    const login = String(form.login ?? '').trim();
    if (!login || form.password !== PASSWORD) {
      ctx.status = 200;
      ctx.type = 'html';
      ctx.body = loginPage(uid, params.client_id, 'Invalid login or password.');
      return undefined;
    }
    ctx.respond = false;
    return provider.interactionFinished(ctx.req, ctx.res, {
      login: { accountId: login },
    }, { mergeWithLastSubmission: false });
  }

  if (action === 'abort') {
    await readBody(ctx);
    ctx.respond = false;
    return provider.interactionFinished(ctx.req, ctx.res, {
      error: 'access_denied',
      error_description: 'End-User denied the request',
    }, { mergeWithLastSubmission: false });
  }

  // confirm
  if (prompt.name !== 'consent') ctx.throw(400, 'not at the consent step');
  await readBody(ctx);
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scope] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scope.join(' '));
    }
  }
  const grantId = await grant.save();
  ctx.respond = false;
  return provider.interactionFinished(ctx.req, ctx.res, {
    consent: { grantId },
  }, { mergeWithLastSubmission: true });
}

// --- device flow: interval, slow_down and the poll log -----------------------------------------

let nextBehaviour = null; // {interval, slowDownPolls} for the next device authorization
const byDeviceCode = new Map(); // device_code -> record
const byUserCode = new Map(); // normalized user_code -> record
const DEVICE_RECORDS_MAX = 1000;
let sequence = 0; // counts device authorizations, so tests can wait for "the next one"

function remember(record) {
  if (byDeviceCode.size >= DEVICE_RECORDS_MAX) {
    const [oldestCode, oldest] = byDeviceCode.entries().next().value;
    byDeviceCode.delete(oldestCode);
    byUserCode.delete(oldest.userCode);
  }
  byDeviceCode.set(record.deviceCode, record);
  byUserCode.set(record.userCode, record);
}

async function deviceAuthorization(ctx, next) {
  await next();
  if (ctx.path !== '/device/auth' || ctx.method !== 'POST' || ctx.status !== 200) return;
  const body = ctx.body;
  if (!body || typeof body !== 'object' || !body.device_code) return;
  const behaviour = nextBehaviour ?? {};
  nextBehaviour = null;
  const interval = behaviour.interval ?? defaultInterval;
  body.interval = interval;
  sequence += 1;
  remember({
    seq: sequence,
    createdMs: Date.now(),
    clientId: ctx.oidc?.client?.clientId,
    scope: ctx.oidc?.params?.scope,
    deviceCode: body.device_code,
    userCode: normalizeUserCode(body.user_code),
    displayCode: body.user_code,
    interval,
    slowDownPolls: behaviour.slowDownPolls ?? 0,
    slowDownLeft: behaviour.slowDownPolls ?? 0,
    polls: [],
    answers: [],
  });
}

async function tokenPolls(ctx, next) {
  if (ctx.path !== '/token' || ctx.method !== 'POST' || !ctx.is('application/x-www-form-urlencoded')) {
    return next();
  }
  // Read the form once; oidc-provider then parses the same text from ctx.request.body.
  const raw = await readBody(ctx);
  ctx.request.body = raw;
  const form = new URLSearchParams(raw);
  const record = form.get('grant_type') === 'urn:ietf:params:oauth:grant-type:device_code'
    ? byDeviceCode.get(form.get('device_code'))
    : undefined;
  if (!record) return next();

  record.polls.push(Date.now());
  if (record.slowDownLeft > 0) {
    record.slowDownLeft -= 1;
    record.answers.push('slow_down');
    ctx.status = 400;
    ctx.set('cache-control', 'no-store');
    ctx.body = {
      error: 'slow_down',
      error_description: new errors.SlowDown().error_description,
    };
    return undefined;
  }
  await next();
  record.answers.push(ctx.status === 200 ? 'ok' : (ctx.body?.error ?? String(ctx.status)));
  return undefined;
}

async function testControl(ctx, next) {
  if (!ctx.path.startsWith('/__test/')) return next();
  ctx.set('cache-control', 'no-store');

  if (ctx.path === '/__test/device-behaviour' && ctx.method === 'POST') {
    const body = await readJson(ctx);
    const interval = body.interval ?? defaultInterval;
    const slowDownPolls = body.slow_down_polls ?? 0;
    if (!Number.isInteger(interval) || interval < 0
        || !Number.isInteger(slowDownPolls) || slowDownPolls < 0) {
      ctx.throw(400, 'interval and slow_down_polls must be non-negative integers');
    }
    nextBehaviour = { interval, slowDownPolls };
    ctx.body = { interval, slow_down_polls: slowDownPolls };
    return undefined;
  }

  if (ctx.path === '/__test/polls' && ctx.method === 'GET') {
    const record = byUserCode.get(normalizeUserCode(ctx.query.user_code));
    if (!record) ctx.throw(404, 'unknown user_code');
    ctx.body = {
      user_code: record.displayCode,
      interval: record.interval,
      slow_down_polls: record.slowDownPolls,
      polls: record.polls,
      answers: record.answers,
    };
    return undefined;
  }

  if (ctx.path === '/__test/device-authorizations' && ctx.method === 'GET') {
    const after = Number(ctx.query.after ?? 0);
    ctx.body = {
      latest: sequence,
      authorizations: [...byDeviceCode.values()]
        .filter((r) => r.seq > after)
        .map((r) => ({
          seq: r.seq,
          user_code: r.displayCode,
          client_id: r.clientId,
          scope: r.scope,
          created_ms: r.createdMs,
        })),
    };
    return undefined;
  }

  if (ctx.path === '/__test/refresh-token-state' && ctx.method === 'POST') {
    const body = await readJson(ctx);
    const token = typeof body.refresh_token === 'string'
      ? await provider.RefreshToken.find(body.refresh_token, { ignoreExpiration: true })
      : undefined;
    const grant = token ? await provider.Grant.find(token.grantId) : undefined;
    const state = {
      found: Boolean(token),
      consumed: Boolean(token?.consumed),
      expired: Boolean(token?.isExpired),
      grant: Boolean(grant),
    };
    state.active = state.found && !state.consumed && !state.expired && state.grant;
    ctx.body = state;
    return undefined;
  }

  return ctx.throw(404);
}

// --- wiring ---------------------------------------------------------------------------------

let provider;

// The issuer names the port: with port 0 the port is learnt (listen) before the provider is built;
// no request is read before the 'request' listener is attached, in the same tick.
const httpServer = createServer();
await new Promise((resolve, reject) => {
  httpServer.once('error', reject);
  httpServer.listen(port, '127.0.0.1', resolve);
});
provider = new Provider(issuerFor(httpServer.address().port), configuration);
provider.use(testControl);
provider.use(tokenPolls);
provider.use(deviceAuthorization);
provider.use(interactions);
provider.on('server_error', (ctx, err) => console.error('server_error', err));
httpServer.on('request', provider.callback());

const { port: boundPort } = httpServer.address();
console.log(JSON.stringify({
  event: 'listening',
  issuer: issuerFor(boundPort),
  port: boundPort,
  id_token_ttl: idTokenTtl,
  access_token_ttl: accessTokenTtl,
  device_code_ttl: deviceCodeTtl,
  device_interval: defaultInterval,
}));

let stopping = false;
function shutdown(reason) {
  if (stopping) return;
  stopping = true;
  console.log(JSON.stringify({ event: 'stopping', reason }));
  httpServer.close(() => process.exit(0));
  httpServer.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
// Never outlive the test session by long, whatever happens to the parent.
setTimeout(() => shutdown('max lifetime'), maxLifetime * 1000).unref();
// stdin is a pipe from the parent: when the parent dies, it closes.
if (process.env.EXIT_ON_STDIN_CLOSE === '1') {
  process.stdin.resume();
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
}
