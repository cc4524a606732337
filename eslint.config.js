// ESLint flat config (`npm run lint`): type-aware promise rules for the TypeScript that a
// tsconfig covers (src/, test/, vitest.config.ts via tsconfig.test.json), the plain
// recommended rules for the JavaScript (scripts/, bench/, bin/, test/helpers/*.mjs).
// Formatting is not linted here.
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default defineConfig(
  { ignores: ['dist/', 'build/', 'node_modules/', 'bench/out/'] },
  {
    files: ['**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { project: './tsconfig.test.json', tsconfigRootDir: import.meta.dirname },
    },
    plugins: { '@typescript-eslint': tseslint.plugin },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // A promise nobody awaits loses its rejection: deliberate fire-and-forget says `void p`.
      '@typescript-eslint/no-floating-promises': 'error',
      // An async function where a void callback is expected (listeners, timers) drops its rejection.
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    extends: [js.configs.recommended],
    languageOptions: { globals: { ...globals.node } },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
  },
);
