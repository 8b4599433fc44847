import { Command } from 'commander';
import { registerChainCommands } from './chain.js';
import { registerClusterCommands } from './cluster.js';
import { registerFunctionCommands } from './functions.js';
import { registerImagesCommands } from './images.js';
import { registerCustomImageCommands } from './custom-images.js';
import { registerInvocationCommands } from './invocations.js';
import { registerTenantCommands } from './tenants.js';
import { registerSandboxCommands } from './sandboxes.js';
import { registerRunCommand, registerStatusCommand, type ClientDefaults } from './run.js';
import { registerServeCommand, type ServeDefaults } from './serve.js';
import { registerOperatorCommand } from './operator.js';

export interface CliDefaults {
  serve: ServeDefaults;
  client: ClientDefaults;
  version: string;
}

/** The `kindling` command line. Defaults come from main (the only reader of the environment). */
export function buildProgram(defaults: CliDefaults): Command {
  const program = new Command('kindling')
    .description('Kindling: run code in isolated sandboxes, from a server you own')
    .version(defaults.version)
    .showHelpAfterError();
  registerServeCommand(program, defaults.serve);
  registerOperatorCommand(program, defaults.serve);
  registerRunCommand(program, defaults.client);
  registerStatusCommand(program, defaults.client);
  registerFunctionCommands(program, defaults.client);
  registerInvocationCommands(program, defaults.client);
  registerTenantCommands(program, defaults.client);
  registerSandboxCommands(program, defaults.client);
  registerImagesCommands(program, { defaultImagesDir: defaults.serve.imagesDir });
  registerCustomImageCommands(program, defaults.client);
  registerChainCommands(program);
  registerClusterCommands(program);
  return program;
}
