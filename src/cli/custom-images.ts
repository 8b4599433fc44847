import type { Command } from 'commander';
import type { CustomImageInfo } from '@kindling/sdk';
import { ImageBuildFailedError } from '@kindling/sdk';
import { IMAGE_SHORT_NAMES } from '../images/recipes.js';
import { clientFrom, guarded, tarDirectory } from './functions.js';
import { collect } from './options.js';
import { clientOptions, type ClientDefaults } from './run.js';

const sizeText = (bytes: number | null): string => (bytes === null ? '-' : `${(bytes / (1024 * 1024)).toFixed(0)} MiB`);
const line = (image: CustomImageInfo): string =>
  `${image.image.padEnd(28)} ${image.status.padEnd(9)} ${sizeText(image.sizeBytes).padStart(8)}  ${image.shared ? 'shared' : 'tenant'}  ${image.from}${image.apt.length > 0 ? ` + ${image.apt.join(' ')}` : ''}${image.files ? ` + ${image.files.entries} files at ${image.files.dest}` : ''}`;

/**
 * `kindling images create|show|custom|delete`: custom images on the server (the local `images build|list` manage the
 * built-in ones on this machine).
 */
export function registerCustomImageCommands(program: Command, defaults: ClientDefaults): void {
  const images = program.commands.find((command) => command.name() === 'images') ?? program.command('images');
  clientOptions(
    images
      .command('create')
      .description('create (or replace) a custom image on the server: a built-in image plus Debian packages and files; waits for the build')
      .argument('<name>', 'image name: lower-case letters, digits, dashes; requests then name it kindling/NAME')
      .requiredOption('--from <image>', `the built-in image it starts from: ${IMAGE_SHORT_NAMES.join(', ')}`)
      .option('--apt <package>', 'a Debian package to install (repeatable, or comma-separated)', collect, [])
      .option('--files <dir>', 'a directory whose files the image carries (at --files-dest)')
      .option('--files-dest <path>', 'where the files go: under /opt, /srv or /usr/local (default /opt/NAME)')
      .option('--shared', 'admin key: an image every tenant may use')
      .option('--no-wait', 'return once the build started')
      .option('--json', 'print the image as JSON'),
    defaults,
  ).action(async (name: string, options: Record<string, unknown>) =>
    guarded(async () => {
      const apt = (options.apt as string[]).flatMap((value) => value.split(',')).map((value) => value.trim()).filter((value) => value !== '');
      const spec = {
        from: options.from as string,
        ...(apt.length > 0 ? { apt } : {}),
        ...(typeof options.filesDest === 'string' ? { filesDest: options.filesDest } : {}),
        ...(options.shared === true ? { shared: true } : {}),
      };
      const files = typeof options.files === 'string' ? await tarDirectory(options.files) : undefined;
      if (options.wait !== false) process.stderr.write(`building ${name} from ${spec.from}${apt.length > 0 ? ` + ${apt.join(' ')}` : ''} (Debian packages: this takes a minute or more)\n`);
      try {
        const image = await clientFrom(options).images.create(name, spec, { ...(files === undefined ? {} : { files }), wait: options.wait !== false });
        process.stdout.write(options.json ? `${JSON.stringify(image, null, 2)}\n` : `${line(image)}\n`);
      } catch (error) {
        if (!(error instanceof ImageBuildFailedError)) throw error;
        process.stderr.write(`${error.image.log ?? ''}\nerror: ${error.message}\n`);
        process.exitCode = 1;
      }
    }),
  );
  clientOptions(images.command('custom').description("list the server's custom images (the caller's tenant's and the shared ones)").option('--json', 'print JSON'), defaults).action(
    async (options: Record<string, unknown>) =>
      guarded(async () => {
        const list = await clientFrom(options).images.list();
        if (options.json) process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
        else process.stdout.write(list.length === 0 ? 'no custom images (kindling images create NAME --from IMAGE --apt PACKAGE)\n' : `${list.map(line).join('\n')}\n`);
      }),
  );
  clientOptions(images.command('show').description("a custom image: status, packages, files and the end of its build log").argument('<name>').option('--json', 'print JSON'), defaults).action(
    async (name: string, options: Record<string, unknown>) =>
      guarded(async () => {
        const image = await clientFrom(options).images.get(name);
        if (options.json) process.stdout.write(`${JSON.stringify(image, null, 2)}\n`);
        else process.stdout.write(`${line(image)}\n${image.error ? `error: ${image.error}\n` : ''}${image.log ? `--- build log (end) ---\n${image.log}` : ''}`);
      }),
  );
  clientOptions(images.command('delete').description('delete a custom image from the server').argument('<name>'), defaults).action(async (name: string, options: Record<string, unknown>) =>
    guarded(async () => {
      await clientFrom(options).images.delete(name);
      process.stdout.write(`deleted image ${name}\n`);
    }),
  );
}
