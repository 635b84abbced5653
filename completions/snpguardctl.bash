_snpguardctl() {
    local i cur prev opts cmd
    COMPREPLY=()
    if [[ "${BASH_VERSINFO[0]}" -ge 4 ]]; then
        cur="$2"
    else
        cur="${COMP_WORDS[COMP_CWORD]}"
    fi
    prev="$3"
    cmd=""
    opts=""

    for i in "${COMP_WORDS[@]:0:COMP_CWORD}"
    do
        case "${cmd},${i}" in
            ",$1")
                cmd="snpguardctl"
                ;;
            snpguardctl,audit)
                cmd="snpguardctl__subcmd__audit"
                ;;
            snpguardctl,bundle)
                cmd="snpguardctl__subcmd__bundle"
                ;;
            snpguardctl,certs)
                cmd="snpguardctl__subcmd__certs"
                ;;
            snpguardctl,completions)
                cmd="snpguardctl__subcmd__completions"
                ;;
            snpguardctl,convert)
                cmd="snpguardctl__subcmd__convert"
                ;;
            snpguardctl,embed)
                cmd="snpguardctl__subcmd__embed"
                ;;
            snpguardctl,help)
                cmd="snpguardctl__subcmd__help"
                ;;
            snpguardctl,id-block)
                cmd="snpguardctl__subcmd__id__subcmd__block"
                ;;
            snpguardctl,launch-config)
                cmd="snpguardctl__subcmd__launch__subcmd__config"
                ;;
            snpguardctl,measure)
                cmd="snpguardctl__subcmd__measure"
                ;;
            snpguardctl,records)
                cmd="snpguardctl__subcmd__records"
                ;;
            snpguardctl,register)
                cmd="snpguardctl__subcmd__register"
                ;;
            snpguardctl,report)
                cmd="snpguardctl__subcmd__report"
                ;;
            snpguardctl__subcmd__bundle,check)
                cmd="snpguardctl__subcmd__bundle__subcmd__check"
                ;;
            snpguardctl__subcmd__bundle,help)
                cmd="snpguardctl__subcmd__bundle__subcmd__help"
                ;;
            snpguardctl__subcmd__bundle__subcmd__help,check)
                cmd="snpguardctl__subcmd__bundle__subcmd__help__subcmd__check"
                ;;
            snpguardctl__subcmd__bundle__subcmd__help,help)
                cmd="snpguardctl__subcmd__bundle__subcmd__help__subcmd__help"
                ;;
            snpguardctl__subcmd__certs,help)
                cmd="snpguardctl__subcmd__certs__subcmd__help"
                ;;
            snpguardctl__subcmd__certs,import)
                cmd="snpguardctl__subcmd__certs__subcmd__import"
                ;;
            snpguardctl__subcmd__certs,list)
                cmd="snpguardctl__subcmd__certs__subcmd__list"
                ;;
            snpguardctl__subcmd__certs,remove)
                cmd="snpguardctl__subcmd__certs__subcmd__remove"
                ;;
            snpguardctl__subcmd__certs__subcmd__help,help)
                cmd="snpguardctl__subcmd__certs__subcmd__help__subcmd__help"
                ;;
            snpguardctl__subcmd__certs__subcmd__help,import)
                cmd="snpguardctl__subcmd__certs__subcmd__help__subcmd__import"
                ;;
            snpguardctl__subcmd__certs__subcmd__help,list)
                cmd="snpguardctl__subcmd__certs__subcmd__help__subcmd__list"
                ;;
            snpguardctl__subcmd__certs__subcmd__help,remove)
                cmd="snpguardctl__subcmd__certs__subcmd__help__subcmd__remove"
                ;;
            snpguardctl__subcmd__help,audit)
                cmd="snpguardctl__subcmd__help__subcmd__audit"
                ;;
            snpguardctl__subcmd__help,bundle)
                cmd="snpguardctl__subcmd__help__subcmd__bundle"
                ;;
            snpguardctl__subcmd__help,certs)
                cmd="snpguardctl__subcmd__help__subcmd__certs"
                ;;
            snpguardctl__subcmd__help,completions)
                cmd="snpguardctl__subcmd__help__subcmd__completions"
                ;;
            snpguardctl__subcmd__help,convert)
                cmd="snpguardctl__subcmd__help__subcmd__convert"
                ;;
            snpguardctl__subcmd__help,embed)
                cmd="snpguardctl__subcmd__help__subcmd__embed"
                ;;
            snpguardctl__subcmd__help,help)
                cmd="snpguardctl__subcmd__help__subcmd__help"
                ;;
            snpguardctl__subcmd__help,id-block)
                cmd="snpguardctl__subcmd__help__subcmd__id__subcmd__block"
                ;;
            snpguardctl__subcmd__help,launch-config)
                cmd="snpguardctl__subcmd__help__subcmd__launch__subcmd__config"
                ;;
            snpguardctl__subcmd__help,measure)
                cmd="snpguardctl__subcmd__help__subcmd__measure"
                ;;
            snpguardctl__subcmd__help,records)
                cmd="snpguardctl__subcmd__help__subcmd__records"
                ;;
            snpguardctl__subcmd__help,register)
                cmd="snpguardctl__subcmd__help__subcmd__register"
                ;;
            snpguardctl__subcmd__help,report)
                cmd="snpguardctl__subcmd__help__subcmd__report"
                ;;
            snpguardctl__subcmd__help__subcmd__bundle,check)
                cmd="snpguardctl__subcmd__help__subcmd__bundle__subcmd__check"
                ;;
            snpguardctl__subcmd__help__subcmd__certs,import)
                cmd="snpguardctl__subcmd__help__subcmd__certs__subcmd__import"
                ;;
            snpguardctl__subcmd__help__subcmd__certs,list)
                cmd="snpguardctl__subcmd__help__subcmd__certs__subcmd__list"
                ;;
            snpguardctl__subcmd__help__subcmd__certs,remove)
                cmd="snpguardctl__subcmd__help__subcmd__certs__subcmd__remove"
                ;;
            snpguardctl__subcmd__help__subcmd__records,add-launch)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__add__subcmd__launch"
                ;;
            snpguardctl__subcmd__help__subcmd__records,approve)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__approve"
                ;;
            snpguardctl__subcmd__help__subcmd__records,delete)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__delete"
                ;;
            snpguardctl__subcmd__help__subcmd__records,disable)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__disable"
                ;;
            snpguardctl__subcmd__help__subcmd__records,discard)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__discard"
                ;;
            snpguardctl__subcmd__help__subcmd__records,enable)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__enable"
                ;;
            snpguardctl__subcmd__help__subcmd__records,export)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__export"
                ;;
            snpguardctl__subcmd__help__subcmd__records,list)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__list"
                ;;
            snpguardctl__subcmd__help__subcmd__records,retire)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__retire"
                ;;
            snpguardctl__subcmd__help__subcmd__records,set-min-tcb)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__set__subcmd__min__subcmd__tcb"
                ;;
            snpguardctl__subcmd__help__subcmd__records,set-offline-unlock)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__set__subcmd__offline__subcmd__unlock"
                ;;
            snpguardctl__subcmd__help__subcmd__records,show)
                cmd="snpguardctl__subcmd__help__subcmd__records__subcmd__show"
                ;;
            snpguardctl__subcmd__help__subcmd__report,show)
                cmd="snpguardctl__subcmd__help__subcmd__report__subcmd__show"
                ;;
            snpguardctl__subcmd__help__subcmd__report,verify)
                cmd="snpguardctl__subcmd__help__subcmd__report__subcmd__verify"
                ;;
            snpguardctl__subcmd__records,add-launch)
                cmd="snpguardctl__subcmd__records__subcmd__add__subcmd__launch"
                ;;
            snpguardctl__subcmd__records,approve)
                cmd="snpguardctl__subcmd__records__subcmd__approve"
                ;;
            snpguardctl__subcmd__records,delete)
                cmd="snpguardctl__subcmd__records__subcmd__delete"
                ;;
            snpguardctl__subcmd__records,disable)
                cmd="snpguardctl__subcmd__records__subcmd__disable"
                ;;
            snpguardctl__subcmd__records,discard)
                cmd="snpguardctl__subcmd__records__subcmd__discard"
                ;;
            snpguardctl__subcmd__records,enable)
                cmd="snpguardctl__subcmd__records__subcmd__enable"
                ;;
            snpguardctl__subcmd__records,export)
                cmd="snpguardctl__subcmd__records__subcmd__export"
                ;;
            snpguardctl__subcmd__records,help)
                cmd="snpguardctl__subcmd__records__subcmd__help"
                ;;
            snpguardctl__subcmd__records,list)
                cmd="snpguardctl__subcmd__records__subcmd__list"
                ;;
            snpguardctl__subcmd__records,retire)
                cmd="snpguardctl__subcmd__records__subcmd__retire"
                ;;
            snpguardctl__subcmd__records,set-min-tcb)
                cmd="snpguardctl__subcmd__records__subcmd__set__subcmd__min__subcmd__tcb"
                ;;
            snpguardctl__subcmd__records,set-offline-unlock)
                cmd="snpguardctl__subcmd__records__subcmd__set__subcmd__offline__subcmd__unlock"
                ;;
            snpguardctl__subcmd__records,show)
                cmd="snpguardctl__subcmd__records__subcmd__show"
                ;;
            snpguardctl__subcmd__records__subcmd__help,add-launch)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__add__subcmd__launch"
                ;;
            snpguardctl__subcmd__records__subcmd__help,approve)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__approve"
                ;;
            snpguardctl__subcmd__records__subcmd__help,delete)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__delete"
                ;;
            snpguardctl__subcmd__records__subcmd__help,disable)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__disable"
                ;;
            snpguardctl__subcmd__records__subcmd__help,discard)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__discard"
                ;;
            snpguardctl__subcmd__records__subcmd__help,enable)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__enable"
                ;;
            snpguardctl__subcmd__records__subcmd__help,export)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__export"
                ;;
            snpguardctl__subcmd__records__subcmd__help,help)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__help"
                ;;
            snpguardctl__subcmd__records__subcmd__help,list)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__list"
                ;;
            snpguardctl__subcmd__records__subcmd__help,retire)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__retire"
                ;;
            snpguardctl__subcmd__records__subcmd__help,set-min-tcb)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__set__subcmd__min__subcmd__tcb"
                ;;
            snpguardctl__subcmd__records__subcmd__help,set-offline-unlock)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__set__subcmd__offline__subcmd__unlock"
                ;;
            snpguardctl__subcmd__records__subcmd__help,show)
                cmd="snpguardctl__subcmd__records__subcmd__help__subcmd__show"
                ;;
            snpguardctl__subcmd__report,help)
                cmd="snpguardctl__subcmd__report__subcmd__help"
                ;;
            snpguardctl__subcmd__report,show)
                cmd="snpguardctl__subcmd__report__subcmd__show"
                ;;
            snpguardctl__subcmd__report,verify)
                cmd="snpguardctl__subcmd__report__subcmd__verify"
                ;;
            snpguardctl__subcmd__report__subcmd__help,help)
                cmd="snpguardctl__subcmd__report__subcmd__help__subcmd__help"
                ;;
            snpguardctl__subcmd__report__subcmd__help,show)
                cmd="snpguardctl__subcmd__report__subcmd__help__subcmd__show"
                ;;
            snpguardctl__subcmd__report__subcmd__help,verify)
                cmd="snpguardctl__subcmd__report__subcmd__help__subcmd__verify"
                ;;
            *)
                ;;
        esac
    done

    case "${cmd}" in
        snpguardctl)
            opts="-H -h -V --bus-address --host --help --version report measure id-block register records certs audit bundle convert embed launch-config completions help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 1 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__audit)
            opts="-n -H -h --count --unverified --record --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --count)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -n)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --record)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__bundle)
            opts="-H -h --bus-address --host --help check help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__bundle__subcmd__check)
            opts="-H -h --dir --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__bundle__subcmd__help)
            opts="check help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__bundle__subcmd__help__subcmd__check)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__bundle__subcmd__help__subcmd__help)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__certs)
            opts="-H -h --bus-address --host --help import list remove help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__certs__subcmd__help)
            opts="import list remove help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__certs__subcmd__help__subcmd__help)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__certs__subcmd__help__subcmd__import)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__certs__subcmd__help__subcmd__list)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__certs__subcmd__help__subcmd__remove)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__certs__subcmd__import)
            opts="-H -h --in-import-dir --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__certs__subcmd__list)
            opts="-H -h --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__certs__subcmd__remove)
            opts="-H -h --source --kind --product --chip-id --tcb --all --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --source)
                    COMPREPLY=($(compgen -W "imported kds-cache" -- "${cur}"))
                    return 0
                    ;;
                --kind)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --product)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --chip-id)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --tcb)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__completions)
            opts="-H -h --bus-address --host --help bash elvish fish powershell zsh"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__convert)
            opts="-H -h --in-image --out-image --out-staging --firmware --server --ca --ingestion-key --kernel --cmdline-append --recovery-key-file --show-recovery-key --no-recovery-keyslot --yes --agent --modules-dir --json --no-encryption --simulated-platform --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --in-image)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --out-image)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --out-staging)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --firmware)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --server)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ca)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ingestion-key)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --kernel)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cmdline-append)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --recovery-key-file)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --agent)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --modules-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__embed)
            opts="-H -h --image --in-bundle --in-staging --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --image)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --in-bundle)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --in-staging)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help)
            opts="report measure id-block register records certs audit bundle convert embed launch-config completions help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__audit)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__bundle)
            opts="check"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__bundle__subcmd__check)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__certs)
            opts="import list remove"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__certs__subcmd__import)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__certs__subcmd__list)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__certs__subcmd__remove)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__completions)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__convert)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__embed)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__help)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__id__subcmd__block)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__launch__subcmd__config)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__measure)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records)
            opts="list show enable disable delete set-min-tcb set-offline-unlock export add-launch approve retire discard"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__add__subcmd__launch)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__approve)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__delete)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__disable)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__discard)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__enable)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__export)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__list)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__retire)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__set__subcmd__min__subcmd__tcb)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__set__subcmd__offline__subcmd__unlock)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__records__subcmd__show)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__register)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__report)
            opts="verify show"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__report__subcmd__show)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__help__subcmd__report__subcmd__verify)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__id__subcmd__block)
            opts="-H -h --measurement --id-key --author-key --family-id --image-id --guest-svn --policy --out-id-block --out-id-auth --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --measurement)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --id-key)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --author-key)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --family-id)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --image-id)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --guest-svn)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --policy)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --out-id-block)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --out-id-auth)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__launch__subcmd__config)
            opts="-H -h --staging-dir --vcpus --vcpu-type --allow-smt --allow-debug --allow-migrate-ma --name --ovmf-hash --out-bundle --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --staging-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --vcpus)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --vcpu-type)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --name)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ovmf-hash)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --out-bundle)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__measure)
            opts="-H -h --ovmf --ovmf-hash --kernel --initrd --append --vcpus --vcpu-type --guest-features --vmm-type --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --ovmf)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ovmf-hash)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --kernel)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --initrd)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --append)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --vcpus)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --vcpu-type)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --guest-features)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --vmm-type)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records)
            opts="-H -h --bus-address --host --help list show enable disable delete set-min-tcb set-offline-unlock export add-launch approve retire discard help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__add__subcmd__launch)
            opts="-H -h --staging --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --staging)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__approve)
            opts="-y -H -h --launch --yes --output --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --launch)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --output)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__delete)
            opts="-H -h --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__disable)
            opts="-H -h --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__discard)
            opts="-H -h --launch --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --launch)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__enable)
            opts="-H -h --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__export)
            opts="-H -h --out --launch --format --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --out)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --launch)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --format)
                    COMPREPLY=($(compgen -W "tar.gz squashfs" -- "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help)
            opts="list show enable disable delete set-min-tcb set-offline-unlock export add-launch approve retire discard help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__add__subcmd__launch)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__approve)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__delete)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__disable)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__discard)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__enable)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__export)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__help)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__list)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__retire)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__set__subcmd__min__subcmd__tcb)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__set__subcmd__offline__subcmd__unlock)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__help__subcmd__show)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__list)
            opts="-H -h --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__retire)
            opts="-H -h --launch --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --launch)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__set__subcmd__min__subcmd__tcb)
            opts="-H -h --bootloader --tee --snp --microcode --fmc --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bootloader)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --tee)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --snp)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --microcode)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --fmc)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__set__subcmd__offline__subcmd__unlock)
            opts="-H -h --json --bus-address --host --help on off"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__records__subcmd__show)
            opts="-H -h --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__register)
            opts="-H -h --name --vcpus --vcpu-type --allow-smt --allow-debug --allow-migrate-ma --min-tcb-bootloader --min-tcb-tee --min-tcb-snp --min-tcb-microcode --min-tcb-fmc --allow-test-root --allow-offline-unlock --staging-dir --out-bundle --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --name)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --vcpus)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --vcpu-type)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --min-tcb-bootloader)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --min-tcb-tee)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --min-tcb-snp)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --min-tcb-microcode)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --min-tcb-fmc)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --staging-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --out-bundle)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__report)
            opts="-H -h --bus-address --host --help verify show help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__report__subcmd__help)
            opts="verify show help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__report__subcmd__help__subcmd__help)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__report__subcmd__help__subcmd__show)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__report__subcmd__help__subcmd__verify)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__report__subcmd__show)
            opts="-H -h --report --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --report)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        snpguardctl__subcmd__report__subcmd__verify)
            opts="-H -h --report --vcek --vlek --certs --cert-table --tsm-json --at --product --vmpl --allow-debug --allow-smt --allow-migrate-ma --require-single-socket --min-abi --strict-tcb --measurement --report-data --host-data --id-key-digest --author-key-digest --min-tcb --json --bus-address --host --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --report)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --vcek)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --vlek)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --certs)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cert-table)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --tsm-json)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --at)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --product)
                    COMPREPLY=($(compgen -W "milan genoa turin" -- "${cur}"))
                    return 0
                    ;;
                --vmpl)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --min-abi)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --measurement)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --report-data)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host-data)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --id-key-digest)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --author-key-digest)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --min-tcb)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --bus-address)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --host)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -H)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
    esac
}

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _snpguardctl -o nosort -o bashdefault -o default snpguardctl
else
    complete -F _snpguardctl -o bashdefault -o default snpguardctl
fi
