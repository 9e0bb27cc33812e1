import assert from 'node:assert/strict';
import { test } from 'node:test';
import Fastify from 'fastify';
import { lazySchemaCompilers } from '../src/api/schema-compilers.js';

/** The API's schema compilers: Fastify's own, each route's schemas compiled on its first request. */

function app() {
  const server = Fastify({ schemaController: lazySchemaCompilers() });
  server.post(
    '/things',
    {
      schema: {
        body: { type: 'object', required: ['name'], additionalProperties: false, properties: { name: { type: 'string', maxLength: 5 } } },
        response: { 200: { type: 'object', properties: { name: { type: 'string' } } } },
      },
    },
    async (request) => ({ name: (request.body as { name: string }).name, secret: 'not in the schema' }),
  );
  // A schema Ajv cannot compile: with compilation at start, ready() would fail.
  server.post('/broken', { schema: { body: { type: 'object', properties: { n: { type: 'no-such-type' } } } } }, async () => ({}));
  return server;
}

test('validation and serialization work as Fastify does them, compiled on first use', async () => {
  const server = app();
  await server.ready();
  const refused = await server.inject({ method: 'POST', url: '/things', payload: { name: 'far too long' } });
  assert.equal(refused.statusCode, 400);
  assert.match(refused.json<{ message: string }>().message, /body\/name must NOT have more than 5 characters/);
  const missing = await server.inject({ method: 'POST', url: '/things', payload: {} });
  assert.equal(missing.statusCode, 400);
  assert.match(missing.json<{ message: string }>().message, /must have required property 'name'/);
  const accepted = await server.inject({ method: 'POST', url: '/things', payload: { name: 'ok' } });
  assert.equal(accepted.statusCode, 200);
  assert.deepEqual(accepted.json(), { name: 'ok' }, 'the response schema keeps only its own fields');
  await server.close();
});

test('a route whose schema cannot compile does not stop the start; its first request fails', async () => {
  const server = app();
  await server.ready();
  const answer = await server.inject({ method: 'POST', url: '/broken', payload: { n: 1 } });
  assert.equal(answer.statusCode, 500);
  assert.match(answer.body, /schema is invalid/);
  await server.close();
});
