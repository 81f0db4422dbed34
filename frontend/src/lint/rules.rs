//! The build-check rules as BuildKit's `frontend/dockerfile/linter`
//! names and describes them: one value per rule, the messages made where
//! the checks run. Experimental as in every release up to v0.26
//! (CopyIgnoredFile and InvalidDefinitionDescription).

/// A build-check rule.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    /// BuildKit's name (`FromAsCasing`).
    pub name: &'static str,
    /// What it asks for.
    pub description: &'static str,
    /// Its documentation, if it has a page.
    pub url: Option<&'static str>,
    /// Off unless `experimental=` turns it on.
    pub experimental: bool,
}

macro_rules! rules {
    ($($id:ident $name:literal $slug:expr, $experimental:literal, $description:literal;)*) => {
        $(
            #[doc = $description]
            pub const $id: Rule = Rule {
                name: $name,
                description: $description,
                url: $slug,
                experimental: $experimental,
            };
        )*
        /// Every rule, in BuildKit's order.
        pub const ALL: &[&Rule] = &[$(&$id),*];
    };
}

rules! {
    STAGE_NAME_CASING "StageNameCasing" Some("https://docs.docker.com/go/dockerfile/rule/stage-name-casing/"), false,
        "Stage names should be lowercase";
    FROM_AS_CASING "FromAsCasing" Some("https://docs.docker.com/go/dockerfile/rule/from-as-casing/"), false,
        "The 'as' keyword should match the case of the 'from' keyword";
    NO_EMPTY_CONTINUATION "NoEmptyContinuation" Some("https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/"), false,
        "Empty continuation lines will become errors in a future release";
    CONSISTENT_INSTRUCTION_CASING "ConsistentInstructionCasing" Some("https://docs.docker.com/go/dockerfile/rule/consistent-instruction-casing/"), false,
        "All commands within the Dockerfile should use the same casing (either upper or lower)";
    DUPLICATE_STAGE_NAME "DuplicateStageName" Some("https://docs.docker.com/go/dockerfile/rule/duplicate-stage-name/"), false,
        "Stage names should be unique";
    RESERVED_STAGE_NAME "ReservedStageName" Some("https://docs.docker.com/go/dockerfile/rule/reserved-stage-name/"), false,
        "Reserved words should not be used as stage names";
    JSON_ARGS_RECOMMENDED "JSONArgsRecommended" Some("https://docs.docker.com/go/dockerfile/rule/json-args-recommended/"), false,
        "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals";
    MAINTAINER_DEPRECATED "MaintainerDeprecated" Some("https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/"), false,
        "The MAINTAINER instruction is deprecated, use a label instead to define an image author";
    UNDEFINED_ARG_IN_FROM "UndefinedArgInFrom" Some("https://docs.docker.com/go/dockerfile/rule/undefined-arg-in-from/"), false,
        "FROM command must use declared ARGs";
    WORKDIR_RELATIVE_PATH "WorkdirRelativePath" Some("https://docs.docker.com/go/dockerfile/rule/workdir-relative-path/"), false,
        "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes";
    UNDEFINED_VAR "UndefinedVar" Some("https://docs.docker.com/go/dockerfile/rule/undefined-var/"), false,
        "Variables should be defined before their use";
    MULTIPLE_INSTRUCTIONS_DISALLOWED "MultipleInstructionsDisallowed" Some("https://docs.docker.com/go/dockerfile/rule/multiple-instructions-disallowed/"), false,
        "Multiple instructions of the same type should not be used in the same stage";
    LEGACY_KEY_VALUE_FORMAT "LegacyKeyValueFormat" Some("https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/"), false,
        "Legacy key/value format with whitespace separator should not be used";
    INVALID_BASE_IMAGE_PLATFORM "InvalidBaseImagePlatform" None, false,
        "Base image platform does not match expected target platform";
    REDUNDANT_TARGET_PLATFORM "RedundantTargetPlatform" Some("https://docs.docker.com/go/dockerfile/rule/redundant-target-platform/"), false,
        "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior";
    SECRETS_USED_IN_ARG_OR_ENV "SecretsUsedInArgOrEnv" Some("https://docs.docker.com/go/dockerfile/rule/secrets-used-in-arg-or-env/"), false,
        "Sensitive data should not be used in the ARG or ENV commands";
    INVALID_DEFAULT_ARG_IN_FROM "InvalidDefaultArgInFrom" Some("https://docs.docker.com/go/dockerfile/rule/invalid-default-arg-in-from/"), false,
        "Default value for global ARG results in an empty or invalid base image name";
    FROM_PLATFORM_FLAG_CONST_DISALLOWED "FromPlatformFlagConstDisallowed" Some("https://docs.docker.com/go/dockerfile/rule/from-platform-flag-const-disallowed/"), false,
        "FROM --platform flag should not use a constant value";
    COPY_IGNORED_FILE "CopyIgnoredFile" Some("https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/"), true,
        "Attempting to Copy file that is excluded by .dockerignore";
    INVALID_DEFINITION_DESCRIPTION "InvalidDefinitionDescription" Some("https://docs.docker.com/go/dockerfile/rule/invalid-definition-description/"), true,
        "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.";
    EXPOSE_PROTO_CASING "ExposeProtoCasing" Some("https://docs.docker.com/go/dockerfile/rule/expose-proto-casing/"), false,
        "Protocol in EXPOSE instruction should be lowercase";
    EXPOSE_INVALID_FORMAT "ExposeInvalidFormat" Some("https://docs.docker.com/go/dockerfile/rule/expose-invalid-format/"), false,
        "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release";
}

/// The rule named `name`.
pub fn by_name(name: &str) -> Option<&'static Rule> {
    ALL.iter().copied().find(|r| r.name == name)
}
