namespace Sidecar.JsonRpc;

/// <summary>MCP methods known to the gateway. Matching is exact and case-sensitive on the unescaped method text.</summary>
public enum McpMethod : byte
{
    /// <summary>No method member.</summary>
    None,
    /// <summary>A method string that is not one of the known ones.</summary>
    Other,
    /// <summary><c>initialize</c></summary>
    Initialize,
    /// <summary><c>ping</c></summary>
    Ping,
    /// <summary><c>server/discover</c></summary>
    ServerDiscover,
    /// <summary><c>tools/list</c></summary>
    ToolsList,
    /// <summary><c>tools/call</c></summary>
    ToolsCall,
    /// <summary><c>prompts/list</c></summary>
    PromptsList,
    /// <summary><c>prompts/get</c></summary>
    PromptsGet,
    /// <summary><c>resources/list</c></summary>
    ResourcesList,
    /// <summary><c>resources/templates/list</c></summary>
    ResourcesTemplatesList,
    /// <summary><c>resources/read</c></summary>
    ResourcesRead,
    /// <summary><c>resources/subscribe</c></summary>
    ResourcesSubscribe,
    /// <summary><c>resources/unsubscribe</c></summary>
    ResourcesUnsubscribe,
    /// <summary><c>completion/complete</c></summary>
    CompletionComplete,
    /// <summary><c>logging/setLevel</c></summary>
    LoggingSetLevel,
    /// <summary><c>sampling/createMessage</c></summary>
    SamplingCreateMessage,
    /// <summary><c>elicitation/create</c></summary>
    ElicitationCreate,
    /// <summary><c>roots/list</c></summary>
    RootsList,
    /// <summary><c>tasks/get</c></summary>
    TasksGet,
    /// <summary><c>tasks/list</c></summary>
    TasksList,
    /// <summary><c>tasks/result</c></summary>
    TasksResult,
    /// <summary><c>tasks/cancel</c></summary>
    TasksCancel,
    /// <summary><c>tasks/update</c></summary>
    TasksUpdate,
    /// <summary><c>subscriptions/listen</c></summary>
    SubscriptionsListen,
    /// <summary><c>notifications/initialized</c></summary>
    NotificationsInitialized,
    /// <summary><c>notifications/cancelled</c></summary>
    NotificationsCancelled,
    /// <summary><c>notifications/progress</c></summary>
    NotificationsProgress,
    /// <summary><c>notifications/message</c></summary>
    NotificationsMessage,
    /// <summary><c>notifications/roots/list_changed</c></summary>
    NotificationsRootsListChanged,
    /// <summary><c>notifications/tools/list_changed</c></summary>
    NotificationsToolsListChanged,
    /// <summary><c>notifications/prompts/list_changed</c></summary>
    NotificationsPromptsListChanged,
    /// <summary><c>notifications/resources/list_changed</c></summary>
    NotificationsResourcesListChanged,
    /// <summary><c>notifications/resources/updated</c></summary>
    NotificationsResourcesUpdated,
    /// <summary><c>notifications/elicitation/complete</c></summary>
    NotificationsElicitationComplete,
    /// <summary><c>notifications/tasks/status</c></summary>
    NotificationsTasksStatus,
}

/// <summary>Mapping between <see cref="McpMethod"/> values and their wire names.</summary>
public static class McpMethods
{
    /// <summary>Maps an unescaped UTF-8 method name to its <see cref="McpMethod"/>; unknown names give <see cref="McpMethod.Other"/>.</summary>
    public static McpMethod Parse(ReadOnlySpan<byte> name) => name.Length switch
    {
        4 => Is(name, "ping"u8, McpMethod.Ping),
        9 => Is(name, "tasks/get"u8, McpMethod.TasksGet),
        10 => Parse10(name),
        11 => Is(name, "prompts/get"u8, McpMethod.PromptsGet),
        12 => Parse12(name),
        14 => name.SequenceEqual("resources/list"u8) ? McpMethod.ResourcesList : Is(name, "resources/read"u8, McpMethod.ResourcesRead),
        15 => Is(name, "server/discover"u8, McpMethod.ServerDiscover),
        16 => Is(name, "logging/setLevel"u8, McpMethod.LoggingSetLevel),
        18 => Is(name, "elicitation/create"u8, McpMethod.ElicitationCreate),
        19 => name.SequenceEqual("resources/subscribe"u8) ? McpMethod.ResourcesSubscribe : Is(name, "completion/complete"u8, McpMethod.CompletionComplete),
        20 => Is(name, "subscriptions/listen"u8, McpMethod.SubscriptionsListen),
        21 => name.SequenceEqual("resources/unsubscribe"u8) ? McpMethod.ResourcesUnsubscribe : Is(name, "notifications/message"u8, McpMethod.NotificationsMessage),
        22 => name.SequenceEqual("sampling/createMessage"u8) ? McpMethod.SamplingCreateMessage : Is(name, "notifications/progress"u8, McpMethod.NotificationsProgress),
        23 => Is(name, "notifications/cancelled"u8, McpMethod.NotificationsCancelled),
        24 => Is(name, "resources/templates/list"u8, McpMethod.ResourcesTemplatesList),
        25 => Is(name, "notifications/initialized"u8, McpMethod.NotificationsInitialized),
        26 => Is(name, "notifications/tasks/status"u8, McpMethod.NotificationsTasksStatus),
        31 => Is(name, "notifications/resources/updated"u8, McpMethod.NotificationsResourcesUpdated),
        32 => name.SequenceEqual("notifications/roots/list_changed"u8) ? McpMethod.NotificationsRootsListChanged : Is(name, "notifications/tools/list_changed"u8, McpMethod.NotificationsToolsListChanged),
        34 => name.SequenceEqual("notifications/prompts/list_changed"u8) ? McpMethod.NotificationsPromptsListChanged : Is(name, "notifications/elicitation/complete"u8, McpMethod.NotificationsElicitationComplete),
        36 => Is(name, "notifications/resources/list_changed"u8, McpMethod.NotificationsResourcesListChanged),
        _ => McpMethod.Other,
    };

    private static McpMethod Is(ReadOnlySpan<byte> name, ReadOnlySpan<byte> expected, McpMethod method)
        => name.SequenceEqual(expected) ? method : McpMethod.Other;

    private static McpMethod Parse10(ReadOnlySpan<byte> name)
    {
        if (name.SequenceEqual("tools/call"u8)) return McpMethod.ToolsCall;
        if (name.SequenceEqual("tools/list"u8)) return McpMethod.ToolsList;
        if (name.SequenceEqual("initialize"u8)) return McpMethod.Initialize;
        if (name.SequenceEqual("roots/list"u8)) return McpMethod.RootsList;
        return Is(name, "tasks/list"u8, McpMethod.TasksList);
    }

    private static McpMethod Parse12(ReadOnlySpan<byte> name)
    {
        if (name.SequenceEqual("prompts/list"u8)) return McpMethod.PromptsList;
        if (name.SequenceEqual("tasks/result"u8)) return McpMethod.TasksResult;
        if (name.SequenceEqual("tasks/cancel"u8)) return McpMethod.TasksCancel;
        return Is(name, "tasks/update"u8, McpMethod.TasksUpdate);
    }

    /// <summary>The wire name of a known method, or null for <see cref="McpMethod.None"/> and <see cref="McpMethod.Other"/>.</summary>
    public static string? GetName(McpMethod method) => method switch
    {
        McpMethod.Initialize => "initialize",
        McpMethod.Ping => "ping",
        McpMethod.ServerDiscover => "server/discover",
        McpMethod.ToolsList => "tools/list",
        McpMethod.ToolsCall => "tools/call",
        McpMethod.PromptsList => "prompts/list",
        McpMethod.PromptsGet => "prompts/get",
        McpMethod.ResourcesList => "resources/list",
        McpMethod.ResourcesTemplatesList => "resources/templates/list",
        McpMethod.ResourcesRead => "resources/read",
        McpMethod.ResourcesSubscribe => "resources/subscribe",
        McpMethod.ResourcesUnsubscribe => "resources/unsubscribe",
        McpMethod.CompletionComplete => "completion/complete",
        McpMethod.LoggingSetLevel => "logging/setLevel",
        McpMethod.SamplingCreateMessage => "sampling/createMessage",
        McpMethod.ElicitationCreate => "elicitation/create",
        McpMethod.RootsList => "roots/list",
        McpMethod.TasksGet => "tasks/get",
        McpMethod.TasksList => "tasks/list",
        McpMethod.TasksResult => "tasks/result",
        McpMethod.TasksCancel => "tasks/cancel",
        McpMethod.TasksUpdate => "tasks/update",
        McpMethod.SubscriptionsListen => "subscriptions/listen",
        McpMethod.NotificationsInitialized => "notifications/initialized",
        McpMethod.NotificationsCancelled => "notifications/cancelled",
        McpMethod.NotificationsProgress => "notifications/progress",
        McpMethod.NotificationsMessage => "notifications/message",
        McpMethod.NotificationsRootsListChanged => "notifications/roots/list_changed",
        McpMethod.NotificationsToolsListChanged => "notifications/tools/list_changed",
        McpMethod.NotificationsPromptsListChanged => "notifications/prompts/list_changed",
        McpMethod.NotificationsResourcesListChanged => "notifications/resources/list_changed",
        McpMethod.NotificationsResourcesUpdated => "notifications/resources/updated",
        McpMethod.NotificationsElicitationComplete => "notifications/elicitation/complete",
        McpMethod.NotificationsTasksStatus => "notifications/tasks/status",
        _ => null,
    };
}
