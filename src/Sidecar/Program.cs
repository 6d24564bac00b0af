using Sidecar.Cli;

return await SidecarCli.InvokeAsync(args, Console.Out, Console.Error);
