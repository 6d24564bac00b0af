namespace Sidecar.Approvals;

/// <summary>Where an approval stands; <see cref="None"/> on a decision that involved none.</summary>
public enum ApprovalStatus : byte
{
    None,

    /// <summary>Waiting for a person (until the rule's <c>approval_timeout</c>).</summary>
    Pending,

    /// <summary>Approved and not used yet: the next identical call goes through once.</summary>
    Approved,

    /// <summary>Refused by a person, with their reason.</summary>
    Denied,

    /// <summary>Nobody decided before <c>approval_timeout</c>, or an approval was not used in time.</summary>
    Expired,

    /// <summary>Approved, and the one call it covers has been released.</summary>
    Used,
}

public static class ApprovalStatusNames
{
    /// <summary>The status in the admin API, errors and audit: <c>pending</c>, <c>approved</c>, <c>denied</c>, <c>expired</c>, <c>used</c>.</summary>
    public static string ToWireName(this ApprovalStatus status) => status switch
    {
        ApprovalStatus.Pending => "pending",
        ApprovalStatus.Approved => "approved",
        ApprovalStatus.Denied => "denied",
        ApprovalStatus.Expired => "expired",
        ApprovalStatus.Used => "used",
        _ => "none",
    };
}
