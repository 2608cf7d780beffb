// The two AWS calls the Node tests make of the local stack, SigV4-signed with the local
// credentials as the SDK would: the @connections DELETE (which the local server verifies) and a
// DynamoDB query of moto (to find a user's connection id, which no client is told).

import { createHash, createHmac } from 'node:crypto';

const ACCESS_KEY_ID = 'test';
const SECRET_ACCESS_KEY = 'test';
const REGION = 'us-east-1';

const sha256 = (data) => createHash('sha256').update(data).digest('hex');
const hmac = (key, data) => createHmac('sha256', key).update(data).digest();
// RFC 3986 encoding, as SigV4 wants it.
const encode = (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** Signs and sends one request. `path` is already encoded; the canonical path encodes it again. */
export async function signedFetch({ method, url, service, body = '', headers = {} }) {
  const u = new URL(url);
  const now = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
  const date = now.slice(0, 8);
  const all = { ...headers, host: u.host, 'x-amz-date': now, 'x-amz-content-sha256': sha256(body) };
  const names = Object.keys(all).map((h) => h.toLowerCase()).sort();
  const lower = Object.fromEntries(Object.entries(all).map(([k, v]) => [k.toLowerCase(), String(v).trim()]));
  const canonicalPath = u.pathname.split('/').map(encode).join('/');
  const canonical = [method, canonicalPath, u.search.slice(1), names.map((h) => `${h}:${lower[h]}\n`).join(''),
    names.join(';'), sha256(body)].join('\n');
  const scope = `${date}/${REGION}/${service}/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', now, scope, sha256(canonical)].join('\n');
  let key = hmac(`AWS4${SECRET_ACCESS_KEY}`, date);
  for (const part of [REGION, service, 'aws4_request']) key = hmac(key, part);
  const signature = createHmac('sha256', key).update(toSign).digest('hex');
  const authorization = `AWS4-HMAC-SHA256 Credential=${ACCESS_KEY_ID}/${scope}, SignedHeaders=${names.join(';')}, Signature=${signature}`;
  return fetch(url, { method, body: body || undefined, headers: { ...all, authorization } });
}

/** `DELETE @connections/{id}` through the stack's own endpoint: API Gateway closes the socket. */
export async function deleteConnection(baseUrl, stage, connectionId) {
  const url = `${baseUrl}/${stage}/@connections/${encodeURIComponent(connectionId)}`;
  const res = await signedFetch({ method: 'DELETE', url, service: 'execute-api' });
  return res.status;
}

/** The connection ids of a user's memberships of a channel, newest join first. */
export async function connectionsOf(env, channel, userId) {
  const body = JSON.stringify({
    TableName: env.table,
    KeyConditionExpression: 'pk = :pk AND begins_with(sk, :conn)',
    ExpressionAttributeValues: { ':pk': { S: `CHAN#${channel}` }, ':conn': { S: 'CONN#' } },
    ConsistentRead: true,
  });
  const res = await signedFetch({
    method: 'POST',
    url: `${env.moto}/`,
    service: 'dynamodb',
    body,
    headers: { 'content-type': 'application/x-amz-json-1.0', 'x-amz-target': 'DynamoDB_20120810.Query' },
  });
  if (!res.ok) throw new Error(`moto Query answered ${res.status}: ${await res.text()}`);
  const items = (await res.json()).Items || [];
  return items
    .filter((i) => i.userId?.S === userId)
    .sort((a, b) => Number(b.joinedAt?.N || 0) - Number(a.joinedAt?.N || 0))
    .map((i) => i.connectionId.S);
}

/** The stored progress snapshot of a document (its type), or null. */
export async function progressSnapshot(env, docId) {
  const res = await signedFetch({
    method: 'POST',
    url: `${env.moto}/`,
    service: 'dynamodb',
    body: JSON.stringify({ TableName: env.table, Key: { pk: { S: `DOC#${docId}` }, sk: { S: 'PROGRESS' } }, ConsistentRead: true }),
    headers: { 'content-type': 'application/x-amz-json-1.0', 'x-amz-target': 'DynamoDB_20120810.GetItem' },
  });
  if (!res.ok) throw new Error(`moto GetItem answered ${res.status}: ${await res.text()}`);
  const item = (await res.json()).Item;
  return item ? item.type.S : null;
}
