import AjvCompiler from '@fastify/ajv-compiler';
import SerializerSelector from '@fastify/fast-json-stringify-compiler';
import type { FastifyServerOptions } from 'fastify';

/**
 * Fastify's own validator and serializer compilers (Ajv, fast-json-stringify), each route's schema
 * compiled on its first request rather than at start. Compiling every route's schemas took ~0.3 s
 * of CPU on each start of the control plane (measured: a test Cellar's start 1.23 s of CPU with
 * them, 0.96 s without), while a process serves only some routes before it is restarted. A schema
 * that cannot compile fails its first request (a 500) instead of the start: every route is
 * exercised by test/bad-input.test.ts.
 */

type Validate = ((data: unknown) => unknown) & { errors?: unknown };
type Serialize = (data: unknown) => string;

/** Fastify reads `errors` off the function it called, so the stand-in passes the compiled one's through. */
function lazyValidator(compile: () => Validate): Validate {
  let compiled: Validate | undefined;
  const validate: Validate = (data) => {
    compiled ??= compile();
    return compiled(data);
  };
  Object.defineProperty(validate, 'errors', { get: () => compiled?.errors, enumerable: true });
  return validate;
}

function lazySerializer(compile: () => Serialize): Serialize {
  let compiled: Serialize | undefined;
  return (data) => {
    compiled ??= compile();
    return compiled(data);
  };
}

export function lazySchemaCompilers(): NonNullable<FastifyServerOptions['schemaController']> {
  const buildValidator = AjvCompiler();
  const buildSerializer = SerializerSelector();
  return {
    compilersFactory: {
      buildValidator: (externalSchemas, options) => {
        const compile = buildValidator(externalSchemas as never, options as never);
        // Typed as Ajv's whole ValidateFunction; Fastify only calls it and reads `errors`.
        return (route) => lazyValidator(() => compile(route as never) as Validate) as unknown as ReturnType<typeof compile>;
      },
      buildSerializer: (externalSchemas, options) => {
        const compile = buildSerializer(externalSchemas as never, options as never);
        return (route) => lazySerializer(() => compile(route as never) as Serialize);
      },
    },
  };
}
